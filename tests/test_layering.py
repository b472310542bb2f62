"""The package layering of DESIGN.md section 2: imports point down only.

core imports nothing from ssmkit outside core; ops imports core; layers and probabilistic
import ops and core; latent imports those and layers (ssmkit layers as encoders); models
imports layers; only train, cli and bench import everything.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ssmkit"
EVERYTHING = None  # sentinel: may import any ssmkit module

ALLOWED: dict[str, set[str] | None] = {
    "_typing": set(),
    "core": {"core"},
    "testing": {"core"},
    "ops": {"core", "ops"},
    "layers": {"core", "ops", "layers"},
    "probabilistic": {"core", "ops", "probabilistic"},
    "latent": {"core", "ops", "layers", "latent"},
    "analysis": {"core", "ops", "layers", "analysis"},
    "models": {"core", "ops", "layers", "models"},
    "data": {"core", "data"},
    "train": EVERYTHING,
    "bench": EVERYTHING,
    "cli": EVERYTHING,
    "__main__": EVERYTHING,
    "__init__": EVERYTHING,
}


def layer_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def ssmkit_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level ssmkit subpackage) for every ssmkit import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            names = names[:1] if node.module != "ssmkit" else names[1:]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}:{node.lineno}: use absolute imports (from ssmkit...)")
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "ssmkit" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


FILES = sorted(SRC.rglob("*.py"))


def test_every_layer_is_known():
    unknown = {layer_of(p) for p in FILES} - set(ALLOWED)
    assert not unknown, f"add these to ALLOWED with their place in the layering: {unknown}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path):
    layer = layer_of(path)
    allowed = ALLOWED[layer]
    if allowed is EVERYTHING:
        return
    bad = [(line, target) for line, target in ssmkit_imports(path) if target not in allowed]
    assert not bad, f"{path.relative_to(SRC)} ({layer}) imports above its layer: {bad}"


def test_checker_catches_a_violation(tmp_path):
    """The checker itself must be able to fail."""
    fake = tmp_path / "x.py"
    fake.write_text(
        "from ssmkit.layers import s4\nimport ssmkit.train.loop\nfrom ssmkit import cli\n"
    )
    assert [t for _, t in ssmkit_imports(fake)] == ["layers", "train", "cli"]
