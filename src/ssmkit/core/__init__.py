"""The shared core: pure tensor functions (no nn.Module, no optional dependencies)."""
