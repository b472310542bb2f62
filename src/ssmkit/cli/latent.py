"""``ssmkit latent dmm|ode|sde``: train the deep latent SSMs on generated data."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from ssmkit.cli.options import int_at_least

# the choices are checked by the model configs (latent.encoders.ENCODERS)
ENCODER_HELP = "sequence layer of the inference network: gru, s4d, lru or mamba"


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
        make_nonlinear_sequences,
        train_dmm,
    )
    from ssmkit.latent import LatentTrainConfig as TrainConfig

    if args.threads:
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
        rnn_dim=args.hidden, likelihood=args.likelihood, encoder=args.encoder,
        encoder_direction=args.encoder_direction,
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


def _irregular_setup(args: argparse.Namespace) -> float:
    """The commands on irregular series: check ``--t-split`` (default 0.7 ``--t-max``) before
    any data or training, set the threads and the seed. Returns the split time."""
    import torch

    t_split = args.t_split if args.t_split is not None else 0.7 * args.t_max
    if not 0 < t_split < args.t_max:
        raise ValueError(f"--t-split must lie in (0, --t-max = {args.t_max}), got {t_split}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return t_split


def _cmd_ode(args: argparse.Namespace) -> int:

    from ssmkit.latent import (
        LatentODE,
        LatentODEConfig,
        make_spirals,
        train_latent_ode,
    )
    from ssmkit.latent import LatentTrainConfig as TrainConfig

    t_split = _irregular_setup(args)
    kw = {"n_grid": args.n_grid, "n_obs": args.n_obs, "t_max": args.t_max}
    train = make_spirals(args.n_train, **kw, seed=args.seed)
    test = make_spirals(args.n_test, **kw, seed=args.seed + 1)
    model_cfg = LatentODEConfig(
        latent_dim=args.latent_dim, rec_dim=args.hidden, ode_hidden=args.hidden,
        decoder_hidden=args.hidden, decoder_method=args.solver, encoder=args.encoder,
    )  # fmt: skip
    train_cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
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


def _cmd_sde(args: argparse.Namespace) -> int:
    import time

    from ssmkit.latent import LatentODE, LatentODEConfig, train_latent_ode
    from ssmkit.latent import LatentTrainConfig as TrainConfig
    from ssmkit.latent.latent_sde import LatentSDE, LatentSDEConfig
    from ssmkit.latent.sde_data import make_stochastic_spirals
    from ssmkit.latent.sde_train import heldout_elbo, iid_gaussian_nll, train_latent_sde

    t_split = _irregular_setup(args)
    kw = {"n_grid": args.n_grid, "n_obs": args.n_obs, "t_max": args.t_max,
          "diffusion": args.diffusion}  # fmt: skip
    train = make_stochastic_spirals(args.n_train, **kw, seed=args.seed)
    test = make_stochastic_spirals(args.n_test, **kw, seed=args.seed + 1)
    sde_cfg = LatentSDEConfig(
        latent_dim=args.latent_dim, context_dim=args.hidden, hidden=args.hidden,
        prior=args.prior, method=args.method, step_size=args.step, encoder=args.encoder,
    )  # fmt: skip
    train_cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    print(f"latent SDE ({args.prior} prior) on {args.n_train} stochastic spirals (diffusion "
          f"{args.diffusion}), {args.n_obs} irregular points each on [0, {args.t_max}]; "
          f"extrapolation after t = {t_split:.2f}")  # fmt: skip
    cpu = time.process_time()
    sde = train_latent_sde(LatentSDE(sde_cfg), train, test, t_split, train_cfg, print)
    rows = {f"latent SDE ({args.prior})": {
        "heldout_nelbo": sde.heldout_nelbo, "interp_mse": sde.interp_mse,
        "extrap_mse": sde.extrap_mse, "cpu_seconds": time.process_time() - cpu,
    }}  # fmt: skip
    if not args.no_ode:
        cpu = time.process_time()
        ode_model = LatentODE(LatentODEConfig(
            latent_dim=args.latent_dim, rec_dim=args.hidden, ode_hidden=args.hidden,
            decoder_hidden=args.hidden,
        ))  # fmt: skip
        ode = train_latent_ode(ode_model, train, test, t_split, train_cfg, print)
        rows["latent ODE"] = {
            "heldout_nelbo": heldout_elbo(ode_model, test, train_cfg.eval_samples, args.seed),
            "interp_mse": ode.interp_mse, "extrap_mse": ode.extrap_mse,
            "cpu_seconds": time.process_time() - cpu,
        }  # fmt: skip
    rows["iid Gaussian / linear interp. / last value"] = {
        "heldout_nelbo": iid_gaussian_nll(train, test), "interp_mse": sde.baseline_interp_mse,
        "extrap_mse": sde.baseline_extrap_mse, "cpu_seconds": 0.0,
    }  # fmt: skip
    print(f"{'model':44s} {'-ELBO/obs':>10s} {'interp MSE':>11s} {'extrap MSE':>11s} {'CPU s':>7s}")
    for name, r in rows.items():
        print(f"{name:44s} {r['heldout_nelbo']:10.4f} {r['interp_mse']:11.4f} "
              f"{r['extrap_mse']:11.4f} {r['cpu_seconds']:7.1f}")  # fmt: skip
    print("(-ELBO/obs of the baseline is its exact NLL per observation)")
    _write(args.out, "latent-sde.json", {
        "model": asdict(sde_cfg), "train": asdict(train_cfg), "t_split": t_split,
        "diffusion": args.diffusion, "results": rows,
    })  # fmt: skip
    return 0


def _cmd_site_vae(args: argparse.Namespace) -> int:
    """``latent cdssm`` / ``latent gpvae``: a linear-SDE-prior VAE on irregular spirals."""
    import time

    from ssmkit.latent import LatentTrainConfig as TrainConfig
    from ssmkit.latent import make_spirals, train_latent_ode
    from ssmkit.latent.cd_ssm import CDSSM, CDSSMConfig
    from ssmkit.latent.gpvae import GPVAE, GPVAEConfig
    from ssmkit.latent.sde_train import heldout_elbo, iid_gaussian_nll

    t_split = _irregular_setup(args)
    kw = {"n_grid": args.n_grid, "n_obs": args.n_obs, "t_max": args.t_max}
    train = make_spirals(args.n_train, **kw, seed=args.seed)
    test = make_spirals(args.n_test, **kw, seed=args.seed + 1)
    if args.latent_command == "cdssm":
        model_cfg = CDSSMConfig(obs_dim=2, state_dim=args.state_dim, aux_dim=args.latent_dim,
                                hidden=args.hidden)  # fmt: skip
        model, name = CDSSM(model_cfg), "continuous-discrete SSM (exact Kalman prior)"
    else:
        model_cfg = GPVAEConfig(obs_dim=2, latent_dim=args.latent_dim, nu=args.nu,
                                lengthscale=args.lengthscale, hidden=args.hidden)  # fmt: skip
        model, name = GPVAE(model_cfg), f"Markovian GP-VAE (Matern-{args.nu})"
    train_cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    print(f"{name} on {args.n_train} noisy spirals, {args.n_obs} irregular points each on "
          f"[0, {args.t_max}]; extrapolation after t = {t_split:.2f}")  # fmt: skip
    cpu = time.process_time()
    res = train_latent_ode(model, train, test, t_split, train_cfg, print)
    cpu = time.process_time() - cpu
    nelbo = heldout_elbo(model, test, train_cfg.eval_samples, args.seed)
    print(f"held-out -ELBO per observation: {nelbo:.4f}  (iid Gaussian NLL: "
          f"{iid_gaussian_nll(train, test):.4f})")  # fmt: skip
    print(f"interpolation MSE: {res.interp_mse:.4f}  (linear interpolation: "
          f"{res.baseline_interp_mse:.4f})")  # fmt: skip
    print(f"extrapolation MSE: {res.extrap_mse:.4f}  (last value: {res.baseline_extrap_mse:.4f})")
    print(f"training CPU time: {cpu:.1f} s")
    _write(args.out, f"latent-{args.latent_command}.json", {
        "model": asdict(model_cfg), "train": asdict(train_cfg), "t_split": t_split,
        "heldout_nelbo": nelbo, "cpu_seconds": cpu, **asdict(res),
    })  # fmt: skip
    return 0


def _common(p: argparse.ArgumentParser, epochs: int, batch: int) -> None:
    p.add_argument("--epochs", type=int, default=epochs, help=f"default {epochs}")
    p.add_argument("--batch-size", type=int, default=batch, help=f"default {batch}")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 1e-2)")
    p.add_argument("--hidden", type=int, default=32, help="hidden units of every network")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int_at_least(0), default=1,
        help="torch threads (small nets: 1; 0: torch's default)",
    )  # fmt: skip
    p.add_argument("--out", help="write the results as JSON into this directory")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``latent dmm`` and ``latent ode`` to the ``ssmkit`` command."""
    latent = sub.add_parser("latent", help="deep latent SSMs: DMM, latent ODE, latent SDE")
    lsub = latent.add_subparsers(dest="latent_command", required=True, metavar="MODEL")

    dmm = lsub.add_parser("dmm", help="deep Markov model on generated nonlinear sequences")
    _common(dmm, epochs=30, batch=32)
    dmm.add_argument("--n-train", type=int, default=256, help="training sequences")
    dmm.add_argument("--n-test", type=int, default=128, help="held-out sequences")
    dmm.add_argument("--length", type=int, default=30, help="maximum sequence length")
    dmm.add_argument("--x-dim", type=int, default=6, help="observation size")
    dmm.add_argument("--z-dim", type=int, default=2, help="latent state size")
    dmm.add_argument("--likelihood", default="gaussian", choices=["gaussian", "bernoulli"])
    dmm.add_argument("--encoder", default="gru", help=ENCODER_HELP)
    dmm.add_argument(
        "--encoder-direction", default="backward", choices=["backward", "bidirectional"],
        help="the posterior reads x_{t:T} (ST-R) or x_{1:T} (ST-LR, smoothing)",
    )  # fmt: skip
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
    ode.add_argument("--encoder", default="gru", help=ENCODER_HELP + " (gru: the ODE-RNN)")
    ode.set_defaults(fn=_cmd_ode)

    for cmd, text in (
        ("cdssm", "continuous-discrete SSM (NCDSSM-style) on irregular spirals"),
        ("gpvae", "Markovian GP-VAE (Matern prior) on irregular spirals"),
    ):
        p = lsub.add_parser(cmd, help=text)
        _common(p, epochs=40, batch=16)
        p.add_argument("--n-train", type=int, default=128, help="training series")
        p.add_argument("--n-test", type=int, default=64, help="held-out series")
        p.add_argument("--n-grid", type=int, default=50, help="points of the time grid")
        p.add_argument("--n-obs", type=int, default=20, help="observed grid points per series")
        p.add_argument("--t-max", type=float, default=5.0, help="end of the time window")
        p.add_argument("--t-split", type=float, help="extrapolate after this time (0.7 t_max)")
        p.add_argument("--latent-dim", type=int, default=2,
                       help="decoder input size (auxiliary a_k / GP channels)")  # fmt: skip
        if cmd == "cdssm":
            p.add_argument("--state-dim", type=int, default=6, help="latent SDE state size")
        else:
            p.add_argument("--nu", type=float, default=1.5, choices=[0.5, 1.5, 2.5],
                           help="Matern smoothness")  # fmt: skip
            p.add_argument("--lengthscale", type=float, default=1.0, help="initial lengthscale")
        p.set_defaults(fn=_cmd_site_vae)

    sde = lsub.add_parser("sde", help="latent SDE vs latent ODE on stochastic spirals")
    _common(sde, epochs=40, batch=16)
    sde.add_argument("--encoder", default="gru", help=ENCODER_HELP + " (gru: Li et al.'s)")
    sde.add_argument("--n-train", type=int, default=128, help="training series")
    sde.add_argument("--n-test", type=int, default=64, help="held-out series")
    sde.add_argument("--n-grid", type=int, default=50, help="points of the time grid")
    sde.add_argument("--n-obs", type=int, default=20, help="observed grid points per series")
    sde.add_argument("--t-max", type=float, default=5.0, help="end of the time window")
    sde.add_argument("--t-split", type=float, help="extrapolate after this time (0.7 t_max)")
    sde.add_argument("--diffusion", type=float, default=0.2, help="Brownian forcing (>= 0)")
    sde.add_argument("--latent-dim", type=int, default=4, help="latent state size")
    sde.add_argument("--prior", default="langevin", choices=["langevin", "linear_noise",
                     "geometric"], help="stable SDE class of the prior")  # fmt: skip
    sde.add_argument("--method", default="euler", choices=["euler", "milstein"])
    sde.add_argument("--step", type=float, default=0.1, help="SDE solver step")
    sde.add_argument("--no-ode", action="store_true", help="skip the latent ODE comparison")
    sde.set_defaults(fn=_cmd_sde)
