import pytest

from ssmkit.train.config import apply_overrides, default_run

TINY_TASKS = {
    "adding": [("length", "12"), ("n_train", "48"), ("n_val", "16"), ("n_test", "16")],
    "digits": [],
    "selective-copying": [("length", "12"), ("n_data", "3"), ("n_train", "48"), ("n_val", "16"),
                          ("n_test", "16")],
    "listops": [("max_length", "40"), ("n_train", "48"), ("n_val", "16"), ("n_test", "16"),
                ("max_depth", "3"), ("max_args", "4")],
}  # fmt: skip


def tiny_run(task="adding", layer="lru", **train):
    pairs = [*TINY_TASKS[task], ("d_model", "8"), ("n_layers", "1"), ("d_state", "4"),
             ("headdim", "4"), ("chunk_size", "4"), ("batch_size", "16"), ("epochs", "2"),
             ("checkpoint_every", "2"), ("log_every", "1")]  # fmt: skip
    pairs += [(k, str(v)) for k, v in train.items()]
    return apply_overrides(default_run(task, layer), pairs)


@pytest.fixture
def tiny():
    return tiny_run
