import pytest

from ssmkit.ops import registry


def test_unknown_op_lists_valid():
    with pytest.raises(ValueError, match="scan"):
        registry.backends("no-such-op")


def test_auto_picks_highest_priority():
    with (
        registry.register("_test_op", "slow", lambda: "slow", priority=0),
        registry.register("_test_op", "fast", lambda: "fast", priority=9),
        registry.register("_test_op", "gpu_only", lambda: "gpu", devices=("cuda",), priority=99),
        registry.register(
            "_test_op", "off", lambda: "off", priority=50, is_available=lambda: False
        ),
    ):
        assert registry.resolve("_test_op", "auto", "cpu").fn() == "fast"
        assert registry.resolve("_test_op", "slow", "cpu").fn() == "slow"
        with pytest.raises(ValueError, match="not available on device 'cpu'"):
            registry.resolve("_test_op", "gpu_only", "cpu")
        with pytest.raises(ValueError, match="not available"):
            registry.resolve("_test_op", "off", "cpu")
        with pytest.raises(ValueError, match="already registered"):
            registry.register("_test_op", "slow", lambda: None)
        with pytest.raises(ValueError, match="reserved"):
            registry.register("_test_op", "auto", lambda: None)
        with pytest.raises(TypeError, match="backend must be a str"):
            registry.resolve("_test_op", 3, "cpu")
    assert "_test_op" not in registry.ops()  # nothing leaks into the global registry


def test_with_register_unregisters_when_the_block_raises():
    with (
        pytest.raises(RuntimeError, match="boom"),
        registry.register("_test_op2", "only", lambda: None),
    ):
        assert registry.resolve("_test_op2", "auto", "cpu").name == "only"
        raise RuntimeError("boom")
    assert "_test_op2" not in registry.ops()


def test_unregister_keeps_the_other_backends_and_names_bad_input():
    with registry.register("_test_op3", "a", lambda: "a", priority=1):
        registry.register("_test_op3", "b", lambda: "b", priority=2)
        registry.unregister("_test_op3", "b")
        assert [b.name for b in registry.backends("_test_op3")] == ["a"]
        with pytest.raises(ValueError, match=r"backend for _test_op3 'b'"):
            registry.unregister("_test_op3", "b")
    with pytest.raises(ValueError, match="op"):
        registry.unregister("_test_op3", "a")
