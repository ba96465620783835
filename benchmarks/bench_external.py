"""Your own model's LLC trajectory: grokbasin (one batched call) vs a devinterp 1.3.2 loop.

Trains a small tanh MLP student on a teacher network's outputs with plain PyTorch, saves
``--checkpoints`` state_dicts (step_<k>.pt), then estimates the LLC at every checkpoint three
ways with identical settings (ε, γ, nβ, chains, burn-in, draws, batch, and the baseline
L_n(w*) = full training loss, passed to devinterp as ``init_loss``):

  1. ``grokbasin llc external`` (CLI, a fresh process: imports, sampling, run dir, figure, report)
     and ``grokbasin.llc.trajectory`` in-process (sampling only): all checkpoints × chains at once;
  2. devinterp 1.3.2's ``estimate_learning_coeff_with_summary``, one checkpoint after another;
  3. the same loop with ``grokbasin.compat.devinterp`` imported instead (chains batched).

Prints wall times, speed ratios and the per-checkpoint agreement (|Δ| / combined standard
error), and writes them to WORKDIR/bench.json.

    python benchmarks/bench_external.py [--workdir /tmp/grokbasin-bench-external] [--chains 2]
        [--burnin 100] [--draws 100] [--step-size 1e-3] [--gamma 10] [--skip-devinterp]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

MODEL_PY = '''
import torch


def student():
    """8 -> 32 -> 32 -> 1 tanh MLP (1,377 parameters)."""
    return torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.Tanh(),
        torch.nn.Linear(32, 32), torch.nn.Tanh(),
        torch.nn.Linear(32, 1),
    )
'''


def train_and_save(work: Path, n: int, steps: int, every: int) -> None:
    """Plain PyTorch: a teacher makes the data, the student is trained with Adam, checkpoints."""
    (work / "model.py").write_text(textwrap.dedent(MODEL_PY))
    sys.path.insert(0, str(work))
    from model import student  # noqa: PLC0415  (the file just written)

    torch.set_num_threads(1)  # tiny ops: a second thread only waits at barriers on a busy box
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    X = torch.randn(n, 8)
    with torch.no_grad():
        Y = teacher(X) + 0.05 * torch.randn(n, 1)
    torch.save({"X": X, "Y": Y}, work / "data.pt")
    net = student()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    ck = work / "checkpoints"
    ck.mkdir()
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (64,))
        opt.zero_grad()
        F.mse_loss(net(X[idx]), Y[idx]).backward()
        opt.step()
        if step % every == 0:
            torch.save(net.state_dict(), ck / f"step_{step}.pt")


def devinterp_loop(work: Path, a: argparse.Namespace, compat: bool) -> tuple[float, dict]:
    """One estimate_learning_coeff_with_summary call per checkpoint; wall time and results."""
    if compat:
        from grokbasin.compat.devinterp import estimate_learning_coeff_with_summary as est
    else:
        from devinterp.slt.sampler import estimate_learning_coeff_with_summary as est
    from model import student  # noqa: PLC0415

    data = torch.load(work / "data.pt")
    X, Y = data["X"], data["Y"]
    loader = DataLoader(TensorDataset(X, Y), batch_size=a.batch, shuffle=True)
    paths = sorted((work / "checkpoints").glob("step_*.pt"), key=lambda p: int(p.stem[5:]))
    out = {}
    torch.set_num_threads(1)  # devinterp's faster setting on this box (BENCHMARKS.md)
    t0 = time.perf_counter()
    for p in paths:
        net = student()
        net.load_state_dict(torch.load(p))
        with torch.no_grad():
            init = float(F.mse_loss(net(X), Y))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = est(
                net, loader, evaluate=lambda m, d: F.mse_loss(m(d[0]), d[1]),
                optimizer_kwargs={"lr": a.step_size, "localization": a.gamma, "nbeta": a.nbeta},
                num_chains=a.chains, num_draws=a.draws, num_burnin_steps=a.burnin,
                init_loss=init, seed=a.seed + int(p.stem[5:]), verbose=False,
            )  # fmt: skip
        out[int(p.stem[5:])] = [r[f"llc-chain/{c}"] for c in range(a.chains)]
    return time.perf_counter() - t0, out


def _fmt(chains: list[float]) -> str:
    c = np.asarray(chains)
    return f"{c.mean():7.3f} ± {c.std(ddof=1) / math.sqrt(len(c)):5.3f}"


def agreement(a: dict, b: dict, chains: int) -> dict:
    """Per-checkpoint |Δmean| / combined SE, and the trajectory-average difference ± its SE."""
    steps = sorted(b)
    z, diffs, var = [], [], []
    for s in steps:
        x, y = np.asarray(a[s]), np.asarray(b[s])
        v = (x.var(ddof=1) + y.var(ddof=1)) / chains
        z.append(abs(x.mean() - y.mean()) / math.sqrt(v))
        diffs.append(x.mean() - y.mean())
        var.append(v)
    ref = float(np.mean([np.mean(b[s]) for s in steps]))
    z = np.asarray(z)
    return {
        "within_2se": float((z <= 2).mean()),
        "within_3se": float((z <= 3).mean()),
        "mean_diff": float(np.mean(diffs)),
        "mean_diff_se": float(math.sqrt(sum(var)) / len(steps)),
        "mean_devinterp": ref,
    }


def _describe(ag: dict) -> str:
    return (
        f"{ag['within_2se']:.0%} / {ag['within_3se']:.0%} of checkpoints within 2 / 3 combined "
        f"SE; trajectory-average difference {ag['mean_diff']:+.3f} ± {ag['mean_diff_se']:.3f} "
        f"({ag['mean_diff'] / ag['mean_devinterp']:+.1%} of devinterp's {ag['mean_devinterp']:.3f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/grokbasin-bench-external")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--train-steps", type=int, default=3000)
    ap.add_argument("--checkpoints", type=int, default=30)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--burnin", type=int, default=100)
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--step-size", type=float, default=1e-3)
    ap.add_argument("--gamma", type=float, default=10.0)
    ap.add_argument("--nbeta", type=float, default=64 / math.log(64))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-devinterp", action="store_true")
    a = ap.parse_args()
    threads = torch.get_num_threads()
    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    train_and_save(work, a.n, a.train_steps, a.train_steps // a.checkpoints)
    print(f"trained and saved {a.checkpoints} checkpoints in {time.perf_counter() - t0:.1f} s")
    flags = [
        "--chains", str(a.chains), "--burnin", str(a.burnin), "--draws", str(a.draws),
        "--step-size", str(a.step_size), "--gamma", str(a.gamma), "--nbeta", str(a.nbeta),
        "--llc-batch-size", str(a.batch), "--llc-seed", str(a.seed),
    ]  # fmt: skip
    cmd = [
        sys.executable, "-m", "grokbasin", "llc", "external", "--model", "model.py:student",
        "--checkpoints", "checkpoints/*.pt", "--data", "data.pt", "--loss", "mse",
        "--out", "runs", "--quiet", "--json", *flags,
    ]  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=os.environ)
    t_cli = time.perf_counter() - t0
    if res.returncode:
        sys.exit(res.stderr)
    run_dir = work / json.loads(res.stdout)["run_dir"]
    from grokbasin.llc import trajectory

    torch.set_num_threads(threads)  # grokbasin: one replica shard per core
    os.chdir(work)
    sampler = {
        "chains": a.chains, "burnin": a.burnin, "draws": a.draws, "step_size": a.step_size,
        "gamma": a.gamma, "nbeta": a.nbeta, "batch_size": a.batch, "seed": a.seed,
    }  # fmt: skip
    t0 = time.perf_counter()
    gb = trajectory("model.py:student", "checkpoints/*.pt", "mse", "data.pt", **sampler)
    t_api = time.perf_counter() - t0
    gb_llc: dict[int, list[float]] = {}
    for r in gb.to_pylist():
        gb_llc.setdefault(r["epoch"], []).append(r["llc"])
    steps_chain = a.checkpoints * a.chains * (a.burnin + a.draws)
    report = {
        "settings": vars(a),
        "chain_steps": steps_chain,
        "grokbasin_cli_s": t_cli,
        "grokbasin_api_s": t_api,
        "run_dir": str(run_dir),
        "load_avg": os.getloadavg(),
        "grokbasin_workers": threads,
        "devinterp_threads": 1,
    }
    print(f"grokbasin llc external (CLI, fresh process, with report): {t_cli:.1f} s")
    print(f"grokbasin.llc.trajectory (in-process, sampling only):     {t_api:.1f} s")
    loops = {}
    for compat in (True, False):
        if a.skip_devinterp and not compat:
            continue
        t, loops["compat" if compat else "devinterp"] = devinterp_loop(work, a, compat)
        report["compat_s" if compat else "devinterp_s"] = t
        print(f"{'grokbasin.compat.devinterp' if compat else 'devinterp 1.3.2'} loop: {t:.1f} s")
    if "devinterp" in loops:
        t = report["devinterp_s"]
        report.update({"speedup_api": t / t_api, "speedup_cli": t / t_cli})
        print(
            f"speed-up over the devinterp loop: {t / t_api:.1f}x in-process, {t / t_cli:.1f}x CLI"
        )
        print(f"  {'step':>5}  {'grokbasin':>16}  {'devinterp':>16}  {'compat':>16}")
        for s in sorted(gb_llc):
            cells = [gb_llc[s], loops["devinterp"][s], loops["compat"][s]]
            print(f"  {s:5d}  " + "  ".join(_fmt(c) for c in cells))
        for name, other in (("grokbasin", gb_llc), ("compat", loops["compat"])):
            report[f"agreement_{name}"] = agreement(other, loops["devinterp"], a.chains)
            print(f"{name} vs devinterp: {_describe(report[f'agreement_{name}'])}")
    (work / "bench.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
