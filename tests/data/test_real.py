"""Bundled data: digits against the source file, MNIST-1D against its procedure, text windows."""

from __future__ import annotations

import csv
import dataclasses
import gzip

import numpy as np
import pytest
import torch

from ssmkit.data import build_task, task_config
from ssmkit.data.images import (
    DIGITS_FILE,
    MNIST1D_TEMPLATES,
    digits_permutation,
    gaussian_smooth,
    mnist1d_arrays,
    resample_linear,
)
from ssmkit.data.text import DEFAULT_TEXT, UNK, decode


def _source_digits():
    with gzip.open(DIGITS_FILE, "rt") as f:
        rows = [[int(v) for v in row] for row in csv.reader(f)]
    table = np.array(rows)
    return table[:, :64], table[:, 64]


def _all(data):
    splits = list(data.splits().values())
    return torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits])


def test_digits_match_the_source_file():
    pixels, labels = _source_digits()
    assert pixels.shape == (1797, 64) and pixels.min() == 0 and pixels.max() == 16
    data = build_task("digits")
    assert [len(s) for s in data.splits().values()] == [1257, 180, 360]
    x, y = _all(data)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # the splits are a permutation of the file: same label counts, same multiset of images
    assert np.array_equal(np.bincount(y.numpy()), np.bincount(labels))
    got = sorted(map(tuple, np.rint(x[..., 0].numpy() * 16).astype(int).tolist()))
    assert got == sorted(map(tuple, pixels.tolist()))
    # per class, the total ink (sum of pixel counts) matches the file
    for d in range(10):
        ink = float(x[y == d].sum()) * 16
        assert ink == pytest.approx(float(pixels[labels == d].sum()))
    # each image keeps its own label: look one up by its pixels
    index = {tuple(p): int(lab) for p, lab in zip(pixels.tolist(), labels, strict=True)}
    for xi, yi in zip(x[:50], y[:50], strict=True):
        assert index[tuple(np.rint(xi[:, 0].numpy() * 16).astype(int).tolist())] == int(yi)


def test_permuted_digits_are_the_digits_permuted():
    plain = build_task("digits")
    permuted = build_task(
        "digits-permuted", dataclasses.replace(task_config("digits-permuted"), permutation_seed=3)
    )
    perm = digits_permutation(3)
    assert sorted(perm.tolist()) == list(range(64)) and perm.tolist() != list(range(64))
    for a, b in zip(plain.splits().values(), permuted.splits().values(), strict=True):
        assert torch.equal(a.x[:, perm], b.x) and torch.equal(a.y, b.y)
    other = build_task(
        "digits-permuted", dataclasses.replace(task_config("digits-permuted"), permutation_seed=4)
    )
    assert not torch.equal(other.train.x, permuted.train.x)
    assert torch.equal(other.train.y, permuted.train.y)  # the split seed is separate


# ----------------------------------------------------------------------------------------------
# MNIST-1D


def test_gaussian_smooth_matches_scipy():
    from scipy import ndimage  # a dev dependency: never skipped

    x = np.random.default_rng(0).normal(size=(6, 72))
    for sigma in (0.7, 2.0, 3.3):
        np.testing.assert_allclose(
            gaussian_smooth(x, sigma), ndimage.gaussian_filter1d(x, sigma, axis=1), atol=1e-12
        )


def test_resample_linear_matches_np_interp():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 30))
    n = np.array([2, 7, 12, 29, 30])
    got = resample_linear(x, n, 17)
    for i in range(5):
        want = np.interp(np.linspace(0, 1, 17), np.linspace(0, 1, n[i]), x[i, : n[i]])
        np.testing.assert_allclose(got[i], want, atol=1e-12)


def test_mnist1d_without_randomness_is_the_stretched_template():
    """With every random transform switched off each example is its digit's template,
    standardised, padded with a fixed number of zeros and resampled to 40 points."""
    c = dataclasses.replace(
        task_config("mnist1d"),
        n_samples=100,
        n_val=10,
        padding_min=40,
        padding_max=40,
        scale_coeff=0.0,
        max_translation=1,
        corr_noise_scale=0.0,
        iid_noise_scale=0.0,
        shear_scale=0.0,
    )
    x, y = mnist1d_arrays(c)
    t = np.asarray(MNIST1D_TEMPLATES, dtype=float)
    t = (t - t.mean(1, keepdims=True)) / t.std(1, keepdims=True)
    t = (t - t[:, :1]) / 6 + 1e-8
    grid = np.linspace(0, 1, 12 + 40)
    padded = np.concatenate([t, np.zeros((10, 40))], axis=1)
    stretched = np.stack([np.interp(grid, np.linspace(0, 1, 52), p) for p in padded])
    expected = np.stack([np.interp(np.linspace(0, 1, 40), grid, s) for s in stretched])[y]
    expected = (expected - expected.mean()) / expected.std()
    np.testing.assert_allclose(x, expected, atol=1e-9)
    assert np.array_equal(np.bincount(y), np.full(10, 10))


def test_mnist1d_defaults_look_like_the_paper():
    data = build_task("mnist1d")
    assert [len(s) for s in data.splits().values()] == [3500, 500, 1000]
    x = torch.cat([data.train.x, data.val.x, data.test.x])[..., 0].double()
    assert float(x.mean()) == pytest.approx(0, abs=1e-5) and float(x.std()) == pytest.approx(
        1, abs=1e-3
    )
    assert np.array_equal(
        np.bincount(torch.cat([data.train.y, data.val.y, data.test.y]).numpy()), np.full(10, 500)
    )
    # hard for a linear model (paper: logistic regression 32%), far above chance
    a = np.c_[data.train.x[..., 0].numpy(), np.ones(len(data.train))]
    w = np.linalg.lstsq(a, np.eye(10)[data.train.y.numpy()], rcond=None)[0]
    b = np.c_[data.test.x[..., 0].numpy(), np.ones(len(data.test))]
    acc = float(((b @ w).argmax(1) == data.test.y.numpy()).mean())
    assert 0.15 < acc < 0.5


def test_mnist1d_shuffle_seq_permutes_time():
    base = dataclasses.replace(task_config("mnist1d"), n_samples=100, n_val=10)
    x, y = mnist1d_arrays(base)
    xs, ys = mnist1d_arrays(dataclasses.replace(base, shuffle_seq=True))
    assert np.array_equal(y, ys)
    assert not np.allclose(x, xs)
    assert np.allclose(np.sort(x, axis=1), np.sort(xs, axis=1))


# ----------------------------------------------------------------------------------------------
# Text


def test_text_windows_are_the_file_with_next_character_targets():
    text = DEFAULT_TEXT.read_text(encoding="utf-8")
    data = build_task("text")
    itos = data.spec.itos
    assert itos[0] == UNK and data.spec.causal
    train_text = text[: len(text) - int(len(text) * 0.05) * 2]
    assert set(itos[1:]) == set(train_text)
    for split in data.splits().values():
        for xi, yi in zip(split.x[:20], split.y[:20], strict=True):
            window = decode(xi, itos)
            assert window in text
            assert decode(yi, itos)[:-1] == window[1:]
            start = text.index(window)
            assert decode(yi, itos)[-1] == text[start + len(window)]
    test_start = text.index(decode(data.test.x[0], itos))
    val_end = text.index(decode(data.val.x[-1], itos)) + data.spec.max_length
    assert val_end < test_start  # the test part comes after the validation part


def test_text_unknown_characters_and_bad_files(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("ab" * 200 + "xyz" * 20)  # 460 characters; x, y, z only after the train part
    c = dataclasses.replace(
        task_config("text"), path=str(f), length=8, val_fraction=0.1, test_fraction=0.1
    )
    data = build_task("text", c)
    assert data.spec.itos == (UNK, "a", "b")
    assert bool((data.test.x == 0).all())  # the test part is all x/y/z: unseen, so <unk>
    assert decode(data.test.x[0], data.spec.itos) == "\ufffd" * 8
    with pytest.raises(ValueError, match="no such file"):
        build_task("text", dataclasses.replace(c, path=str(tmp_path / "missing.txt")))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(ValueError, match="not UTF-8"):
        build_task("text", dataclasses.replace(c, path=str(bad)))
    with pytest.raises(ValueError, match=r"TextConfig\.length must be < the val part"):
        build_task("text", dataclasses.replace(c, length=100))
