"""``ssmkit latent dmm`` and ``ssmkit latent ode``: train the deep latent SSMs on generated data."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path


def _write(out: str | None, name: str, payload: dict) -> None:
    if out is None:
        return
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"results written to {path / name}")


def _cmd_dmm(args: argparse.Namespace) -> int:
    import torch

    from ssmkit.latent import (
        DeepMarkovModel,
        DMMConfig,
        TrainConfig,
        make_nonlinear_sequences,
        train_dmm,
    )

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    lo = max(1, args.length * 2 // 3)
    train = make_nonlinear_sequences(
        args.n_train, args.length, args.x_dim, args.likelihood, lo, seed=args.seed
    )
    test = make_nonlinear_sequences(
        args.n_test, args.length, args.x_dim, args.likelihood, lo, seed=args.seed + 1
    )
    model_cfg = DMMConfig(
        x_dim=args.x_dim, z_dim=args.z_dim, transition_dim=args.hidden, emission_dim=args.hidden,
        rnn_dim=args.hidden, likelihood=args.likelihood,
    )  # fmt: skip
    train_cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    print(f"deep Markov model on {args.n_train} generated sequences (length <= {args.length}, "
          f"{args.likelihood} likelihood); held-out set of {args.n_test}")  # fmt: skip
    res = train_dmm(DeepMarkovModel(model_cfg), train, test, train_cfg, progress=print)
    print(f"held-out NLL bound (-ELBO): {res.test_nll_bound:.4f} nats/step")
    print(f"iid Gaussian/Bernoulli baseline: {res.baseline_nll:.4f} nats/step")
    print(f"training time: {res.seconds:.1f} s")
    _write(args.out, "latent-dmm.json", {
        "model": asdict(model_cfg), "train": asdict(train_cfg), **asdict(res)
    })  # fmt: skip
    return 0


def _cmd_ode(args: argparse.Namespace) -> int:
    import torch

    from ssmkit.latent import (
        LatentODE,
        LatentODEConfig,
        TrainConfig,
        make_spirals,
        train_latent_ode,
    )

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    kw = {"n_grid": args.n_grid, "n_obs": args.n_obs, "t_max": args.t_max}
    train = make_spirals(args.n_train, **kw, seed=args.seed)
    test = make_spirals(args.n_test, **kw, seed=args.seed + 1)
    model_cfg = LatentODEConfig(
        latent_dim=args.latent_dim, rec_dim=args.hidden, ode_hidden=args.hidden,
        decoder_hidden=args.hidden, decoder_method=args.solver,
    )  # fmt: skip
    train_cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    t_split = args.t_split if args.t_split is not None else 0.7 * args.t_max
    print(f"latent ODE on {args.n_train} noisy spirals, {args.n_obs} irregular points each "
          f"on [0, {args.t_max}]; extrapolation after t = {t_split:.2f}")  # fmt: skip
    res = train_latent_ode(LatentODE(model_cfg), train, test, t_split, train_cfg, print)
    print(f"interpolation MSE: {res.interp_mse:.4f}  (linear interpolation: "
          f"{res.baseline_interp_mse:.4f})")  # fmt: skip
    print(f"extrapolation MSE: {res.extrap_mse:.4f}  (last value: {res.baseline_extrap_mse:.4f})")
    print(f"training time: {res.seconds:.1f} s")
    _write(args.out, "latent-ode.json", {
        "model": asdict(model_cfg), "train": asdict(train_cfg), "t_split": t_split, **asdict(res)
    })  # fmt: skip
    return 0


def _common(p: argparse.ArgumentParser, epochs: int, batch: int) -> None:
    p.add_argument("--epochs", type=int, default=epochs, help=f"default {epochs}")
    p.add_argument("--batch-size", type=int, default=batch, help=f"default {batch}")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 1e-2)")
    p.add_argument("--hidden", type=int, default=32, help="hidden units of every network")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (small nets: 1)")
    p.add_argument("--out", help="write the results as JSON into this directory")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``latent dmm`` and ``latent ode`` to the ``ssmkit`` command."""
    latent = sub.add_parser("latent", help="deep latent SSMs: deep Markov model, latent ODE")
    lsub = latent.add_subparsers(dest="latent_command", required=True, metavar="MODEL")

    dmm = lsub.add_parser("dmm", help="deep Markov model on generated nonlinear sequences")
    _common(dmm, epochs=30, batch=32)
    dmm.add_argument("--n-train", type=int, default=256, help="training sequences")
    dmm.add_argument("--n-test", type=int, default=128, help="held-out sequences")
    dmm.add_argument("--length", type=int, default=30, help="maximum sequence length")
    dmm.add_argument("--x-dim", type=int, default=6, help="observation size")
    dmm.add_argument("--z-dim", type=int, default=2, help="latent state size")
    dmm.add_argument("--likelihood", default="gaussian", choices=["gaussian", "bernoulli"])
    dmm.set_defaults(fn=_cmd_dmm)

    ode = lsub.add_parser("ode", help="latent ODE on irregularly sampled noisy spirals")
    _common(ode, epochs=40, batch=16)
    ode.add_argument("--n-train", type=int, default=128, help="training series")
    ode.add_argument("--n-test", type=int, default=64, help="held-out series")
    ode.add_argument("--n-grid", type=int, default=50, help="points of the time grid")
    ode.add_argument("--n-obs", type=int, default=20, help="observed grid points per series")
    ode.add_argument("--t-max", type=float, default=5.0, help="end of the time window")
    ode.add_argument("--t-split", type=float, help="extrapolate after this time (0.7 t_max)")
    ode.add_argument("--latent-dim", type=int, default=4, help="latent state size")
    ode.add_argument("--solver", default="rk4", choices=["euler", "rk4", "dopri5"])
    ode.set_defaults(fn=_cmd_ode)
