from ssmkit.analysis.hippo_plot import demo_signal, plot_reconstruction


def test_plot_writes_png_and_errors_fall(tmp_path):
    path = tmp_path / "h.png"
    errors = plot_reconstruction(demo_signal(600), "legs", (8, 32), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert errors[32] < errors[8]


def test_demo_signal_seeded():
    assert (demo_signal(50, seed=1) == demo_signal(50, seed=1)).all()
    assert not (demo_signal(50, seed=1) == demo_signal(50, seed=2)).all()
