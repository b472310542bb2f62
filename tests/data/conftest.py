"""Shared fixtures of the data tests: small user files and small configs of every task."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ssmkit.data import task_config


def write_classification_csv(path, n_rows=40, n_values=12, seed=0, ragged_tail=True):
    """A wide CSV: label column first (strings 'a'/'b'), then n_values numeric columns; every
    third row ends early (trailing empty cells). Returns (labels, rows of floats)."""
    rng = np.random.default_rng(seed)
    labels, rows = [], []
    lines = ["label," + ",".join(f"v{i}" for i in range(n_values))]
    for i in range(n_rows):
        n = n_values - 4 if ragged_tail and i % 3 == 0 else n_values
        vals = [round(float(v), 4) for v in rng.normal(size=n)]
        label = "b" if rng.random() < 0.5 else "a"
        labels.append(label)
        rows.append(vals)
        lines.append(label + "," + ",".join(map(str, vals)) + "," * (n_values - n))
    path.write_text("\n".join(lines) + "\n")
    return labels, rows


def write_series_csv(path, n=400):
    """A long CSV: a time column then two variables; returns the (n, 2) values."""
    t = np.arange(n)
    values = np.stack([np.sin(t / 7.0), 0.01 * t + np.cos(t / 3.0)], axis=1).round(5)
    lines = ["time,a,b"] + [f"{i},{a},{b}" for i, (a, b) in zip(t, values, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return values


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_classification_csv(d / "cls.csv")
    write_series_csv(d / "series.csv")
    return d


SMALL = {
    "selective-copying": {"n_train": 64, "n_val": 8, "n_test": 8},
    "induction-heads": {"n_train": 64, "n_val": 8, "n_test": 8},
    "mqar": {"n_train": 64, "n_val": 8, "n_test": 8},
    "copying": {"n_train": 64, "n_val": 8, "n_test": 8},
    "adding": {"n_train": 64, "n_val": 8, "n_test": 8},
    "listops": {"n_train": 64, "n_val": 8, "n_test": 8, "max_length": 96},
    "digits": {},
    "digits-permuted": {},
    "mnist1d": {"n_samples": 200, "n_val": 20},
    "text": {"length": 32},
}


@pytest.fixture
def small_config(data_dir):
    """small_config(name, **changes): a fast config of task ``name``."""

    def make(name, **changes):
        fields = dict(SMALL.get(name, {}))
        if name == "csv-classification":
            fields["path"] = str(data_dir / "cls.csv")
        if name == "csv-forecast":
            fields.update(path=str(data_dir / "series.csv"), time_column="time", window=16)
        fields.update(changes)
        return dataclasses.replace(task_config(name), **fields)

    return make
