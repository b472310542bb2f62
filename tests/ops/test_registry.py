import pytest

from ssmkit.ops import registry


def test_unknown_op_lists_valid():
    with pytest.raises(ValueError, match="scan"):
        registry.backends("no-such-op")


def test_auto_picks_highest_priority():
    registry.register("_test_op", "slow", lambda: "slow", priority=0)
    registry.register("_test_op", "fast", lambda: "fast", priority=9)
    registry.register("_test_op", "gpu_only", lambda: "gpu", devices=("cuda",), priority=99)
    registry.register("_test_op", "off", lambda: "off", priority=50, is_available=lambda: False)
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
