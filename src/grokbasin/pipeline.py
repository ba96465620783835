"""`grokbasin run`: train → LLC trajectory → theory → grokking metrics → figures → report.

Each stage reads what the previous one wrote to the run directory and skips work already done:
training is cached by config hash, LLC rows by sampler hash and epoch, the theory by the final
checkpoint and sampler hash. Figures and the report are re-rendered (seconds) from those files.

Everything that can be checked is checked before any work (config, output folder, memory), and
the run directory stays locked for the whole job. A diverged run (non-finite training loss) gets
a report that says so instead of numeric theory on NaN weights.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from grokbasin.analysis.grokking import grokking_metrics
from grokbasin.config import LLCConfig, RunConfig, load_yaml, short_hash
from grokbasin.device import resolve
from grokbasin.errors import CorruptFileError
from grokbasin.llc.advice import advice_lines
from grokbasin.llc.laplace import laplace_for_checkpoint
from grokbasin.llc.trajectory import check_llc_fits, estimate_run
from grokbasin.progress import console
from grokbasin.report import figures as figs
from grokbasin.report.dashboard import dashboard_section
from grokbasin.report.html import write_run_report
from grokbasin.report.markdown import write_run_markdown
from grokbasin.store import binding, query
from grokbasin.store.llc_results import llc_summary
from grokbasin.store.rundir import RunDir, atomic_write, read_parquet, recovery_hint
from grokbasin.theory.closed_form import theory_table
from grokbasin.theory.numeric import effective_width
from grokbasin.train.runner import diverged_replicas, preflight, train


@dataclass
class RunSummary:
    """What one `grokbasin run` produced; ``rows`` is the printed summary table."""

    run: RunDir
    metrics: list[dict[str, Any]]
    theory: dict[str, Any]
    llc: list[dict[str, Any]]
    health: list[str]
    figures: dict[str, Path] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)


def run(cfg: RunConfig, root: str | Path = "runs", progress: bool = True) -> RunSummary:
    """The whole main job for ``cfg``; every stage resumes or is skipped when already done."""
    device = resolve(cfg.device)
    run_dir = RunDir(Path(root) / cfg.run_hash())
    if not run_dir.is_trained():
        preflight([cfg], root)
    check_llc_fits(cfg, device)
    with run_dir.lock(create=True):
        trained = train(cfg, root, progress)
        record_sampler(trained.run, cfg.llc)
        llc = estimate_run(trained.run.path, _llc_after(trained, cfg.llc), device, progress)
        summary = report_run(trained.run, cfg.model_copy(update={"device": "cpu"}))
    summary.statuses = {
        "train": trained.status,
        "llc": f"{len(llc.computed)} checkpoints sampled, {len(llc.cached)} cached",
    }
    return summary


def _llc_after(trained, llc: LLCConfig) -> LLCConfig:
    """A run that stopped early because it diverged lacks later checkpoints: sample those it has."""
    wanted = llc.epochs_wanted()
    if not trained.diverged or wanted is None:
        return llc
    have = [e for e in wanted if e in set(trained.run.checkpoint_epochs())]
    return llc.model_copy(update={"checkpoints": ",".join(map(str, have)) if have else "last"})


def record_sampler(run_dir: RunDir, llc: LLCConfig) -> None:
    """Write ``llc`` into the run's config.yaml: the sampler its estimates are made with.

    Training writes the library-default sampler (the run directory is shared by every sampler);
    without this, a later bare `grokbasin llc RUN_DIR` with no llc.parquet would sample with the
    default instead of, say, a preset's. Rewritten before sampling so a killed run resumes with it.
    """
    with run_dir.lock():  # a writer of run files like any other (waits; refuses read-only dirs)
        binding.stored_config(run_dir)  # never rewrite an edited config as if it were ours
        data = load_yaml(run_dir.config)
        new = llc.model_dump(mode="json", exclude={"restrict"})  # restrictions: per call
        if data.get("llc") != new:
            data["llc"] = new
            atomic_write(run_dir.config, yaml.safe_dump(data, sort_keys=False).encode())


def stored_config(run_dir: RunDir) -> RunConfig:
    """The run's config with the sampler settings of its newest LLC estimate (if any)."""
    cfg = binding.run_config(run_dir).model_copy(update={"device": "cpu"})
    if run_dir.llc.exists():
        rows = read_parquet(run_dir.llc).select(["sampler_config"]).to_pylist()
        if rows:
            settings = json.loads(rows[-1]["sampler_config"])
            known = {k: v for k, v in settings.items() if k in LLCConfig.model_fields}
            cfg = cfg.model_copy(update={"llc": LLCConfig.model_validate(known)})
    return cfg


def report_run(run_dir: RunDir, cfg: RunConfig | None = None) -> RunSummary:
    """Metrics, theory, figures and report.html/report.md from what the run directory holds."""
    with run_dir.lock():
        return _report_run(run_dir, cfg)


def _report_run(run_dir: RunDir, cfg: RunConfig | None) -> RunSummary:
    cfg = cfg or stored_config(run_dir)
    metrics_t = read_parquet(run_dir.metrics)
    shash = cfg.llc.sampler_hash()
    n_train = cfg.task.n_train
    metrics = grokking_metrics(metrics_t, n_train, cfg.train.batch_size)
    final_epoch = int(run_dir.read_provenance().get("final_epoch", run_dir.checkpoint_epochs()[-1]))
    theory = checkpoint_theory(run_dir, cfg, final_epoch)
    llc_rows = query.llc_rows([query.Want(run_dir.path, shash, "any")])[0]
    summary = llc_summary(llc_rows, cfg.llc.resolve_nbeta(n_train))
    diverged = diverged_epochs(run_dir)
    for m in metrics:
        if m["replica"] in diverged:
            m["regime"] = "diverged"
    health = divergence_lines(diverged) + advice_lines(llc_rows, shlex.quote(str(run_dir.path)))
    figures = render_figures(run_dir, cfg, metrics_t.to_pylist(), metrics, theory, shash)
    report_rows = theory_rows(theory)
    config = cfg.model_dump(mode="json")
    prov = run_dir.read_provenance()
    dash = dashboard_section(run_dir.path, llc_rows, shash, cfg.llc.resolve_nbeta(n_train))
    args = (config, metrics, report_rows, summary, health)
    write_run_report(run_dir.path, *args, figures, prov, dashboard=dash)
    rel = {k: v.relative_to(run_dir.path.resolve()) for k, v in figures.items()}
    write_run_markdown(run_dir.path, *args, rel, prov, dashboard=dash)
    return RunSummary(run_dir, metrics, theory, summary, health, figures)


def checkpoint_theory(run_dir: RunDir, cfg: RunConfig, epoch: int) -> dict[str, Any]:
    """Closed forms plus numeric rank and λ_Lap at the final checkpoint (cached in theory.json)."""
    path = run_dir.path / "theory.json"
    key = short_hash([epoch, cfg.llc.sampler_hash(), cfg.model.model_dump()])
    if path.exists():
        cached = read_theory(path)
        if cached.get("key") == key:
            return cached
    out: dict[str, Any] = {"key": key, "epoch": epoch, "closed_form": [], "numeric": {}}
    if cfg.model.name == "quadratic":
        out["closed_form"] = theory_table(cfg.task.p, cfg.model.width)
    params = run_dir.load_checkpoint(epoch)
    if not all(bool(torch.isfinite(v[:1]).all()) for v in params.values()):
        out["diverged"] = True  # no spectrum or effective width of NaN weights
        atomic_write(path, json.dumps(out, indent=2, default=float).encode())
        return out
    if cfg.model.name == "quadratic":
        out["numeric"]["k_eff"] = int(effective_width(params["V"][:1])[0])
    if cfg.train.loss == "centred_mse":  # one Gauss-Newton spectrum gives λ_Lap and rank(J_c)
        nbeta = cfg.llc.resolve_nbeta(cfg.task.n_train)
        lap = laplace_for_checkpoint(run_dir.path, epoch, 0, [nbeta], [cfg.llc.gamma])
        out["laplace"] = {
            "value": float(lap.values[0, 0]),
            "stderr": float(lap.stderr[0, 0]) if lap.stderr is not None else None,
            "nbeta": nbeta,
            "gamma": cfg.llc.gamma,
            "method": lap.method,
        }
        if lap.limit is not None:
            out["numeric"]["llc_train"] = lap.limit
            lo, hi = lap.rank_bounds or (lap.rank, lap.rank)
            out["numeric"]["llc_train_bounds"] = [lo / 2, hi / 2]
            out["numeric"]["llc_train_stderr"] = (lap.rank_stderr or 0.0) / 2
            out["numeric"]["llc_train_method"] = lap.method
    atomic_write(path, json.dumps(out, indent=2, default=float).encode())
    return out


def read_theory(path: Path) -> dict[str, Any]:
    """The cached theory.json; a damaged one is a CorruptFileError naming it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(
            f"{path}: unreadable ({e.__class__.__name__}); {recovery_hint(path)}"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("closed_form", []), list):
        raise CorruptFileError(f"{path}: not a grokbasin theory file; {recovery_hint(path)}")
    return data


def diverged_epochs(run_dir: RunDir) -> dict[int, int]:
    """Replica -> first epoch with a non-finite loss (from provenance, else from the metrics)."""
    div = diverged_replicas(run_dir.read_provenance())
    if not div and run_dir.metrics.exists():
        for r in read_parquet(run_dir.metrics).to_pylist():
            losses = [r.get(k) for k in ("train_loss", "val_loss")]
            if any(v is not None and not np.isfinite(v) for v in losses):
                div.setdefault(int(r["replica"]), int(r["epoch"]))
    return div


def divergence_lines(div: dict[int, int]) -> list[str]:
    """One report line per diverged replica."""
    return [
        f"run diverged: replica {rep}'s training loss is not finite from epoch {e} on "
        "(lower train.lr); LLC estimates and theory at later checkpoints are meaningless"
        for rep, e in sorted(div.items())
    ]


def theory_rows(theory: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's theory table: closed forms, then the checkpoint's numeric quantities."""
    rows = [
        {"quantity": r["name"], "λ": r["value"], "applies": r["applies"], "source": r["source"]}
        for r in theory.get("closed_form", [])
    ]
    e = theory.get("epoch")
    num = theory.get("numeric", {})
    if "llc_train" in num:
        rows.append(
            {
                "quantity": f"numeric rank(J_c)/2 on training data (epoch {e}{_rank_note(num)})",
                "λ": num["llc_train"],
                "applies": True,
                "source": "SPEC §3.4 data-aware",
            }
        )
    if "k_eff" in num:
        rows.append(
            {
                "quantity": f"effective width K_eff (epoch {e})",
                "λ": num["k_eff"],
                "applies": True,
                "source": "Thm 5.5",
            }
        )
    if "laplace" in theory:
        lap = theory["laplace"]
        rows.append(
            {
                "quantity": f"λ_Lap at nβ={lap['nbeta']:.4g}, γ={lap['gamma']:.4g} "
                f"(epoch {e}, {lap['method']}{_se_note(lap.get('stderr'))})",
                "λ": lap["value"],
                "applies": True,
                "source": "SPEC §3.3 localised Laplace",
            }
        )
    return rows


def _se_note(se: float | None) -> str:
    return f", ± {se:.3g} probe s.e." if se else ""


def _rank_note(num: dict[str, Any]) -> str:
    """', exact' or the SLQ bracket of the numeric rank, for table labels."""
    lo, hi = num.get("llc_train_bounds") or (None, None)
    if lo is None or lo == hi:
        return ", exact" if lo is not None else ""
    return (
        f", {num.get('llc_train_method', 'slq')}: midpoint of [{lo:,.0f}, {hi:,.0f}]"
        f"{_se_note(num.get('llc_train_stderr'))}"
    )


def render_figures(
    run_dir: RunDir, cfg: RunConfig, metrics_rows, metrics, theory, shash: str
) -> dict[str, Path]:
    """The Fig. 3-style trajectory figure (one per replica, at most 4) as PNGs."""
    out = {}
    marks_all = {m["replica"]: m for m in metrics}
    replicas = sorted(marks_all)[:4]
    sampler = figs.sampler_settings(cfg.llc, cfg.task.n_train)
    wants = [query.Want(run_dir.path, shash, sampler["nbeta"], replica=r) for r in replicas]
    restricted = restricted_arrays(run_dir, cfg.llc, sampler["nbeta"], replicas)
    for rep, rows in zip(replicas, query.llc_rows(wants), strict=True):
        m_in, l_in = query.metrics_arrays(metrics_rows, rep), query.llc_arrays(rows)
        if l_in is not None and restricted.get(rep):
            l_in["restricted"] = restricted[rep]
        marks = {"t_mem": marks_all[rep].get("t_mem"), "t_gen": marks_all[rep].get("t_gen")}
        title = _title(cfg, marks_all[rep])
        fig = figs.trajectory_figure(
            m_in,
            l_in,
            _figure_theory(theory),
            marks,
            title=title,
            sampler=sampler,
            x_label=figs.unit_label(cfg.train.unit),
        )
        name = "trajectory.png" if len(replicas) == 1 else f"trajectory_replica{rep}.png"
        path = (run_dir.figures / name).resolve()
        figs.save_png(fig, path)
        out[f"Training and LLC trajectory (replica {rep})"] = path
    return out


def restricted_arrays(
    run_dir: RunDir, llc: LLCConfig, nbeta: float, replicas: list[int]
) -> dict[int, dict[str, dict[str, Any]]]:
    """Replica -> restriction name -> its λ̂ arrays (``query.llc_arrays``) and patterns, for
    the weight restrictions stored under these sampler settings (none: {})."""
    found = query.restriction_hashes(run_dir.path, llc)
    wants = [
        query.Want(run_dir.path, h, nbeta, replica=r) for r in replicas for h, _ in found.values()
    ]
    got = iter(query.llc_rows(wants)) if wants else iter([])
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for r in replicas:
        for name, (_, pats) in found.items():
            arrays = query.llc_arrays(next(got))
            if arrays is not None:
                out.setdefault(r, {})[name] = {**arrays, "patterns": pats}
    return out


def _figure_theory(theory: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in theory.get("closed_form", []):
        if r["name"].startswith("unified"):
            rows.append({"name": "closed form (v3 unified)", "value": r["value"]})
    num = theory.get("numeric", {})
    if "llc_train" in num:
        rows.append({"name": "numeric rank(J_c)/2, final", "value": num["llc_train"]})
    if "laplace" in theory:
        rows.append({"name": "λ_Lap, final checkpoint", "value": theory["laplace"]["value"]})
    return rows


def _title(cfg: RunConfig, rep: dict[str, Any]) -> str:
    return (
        f"{cfg.model.name} net, p={cfg.task.p}, K={cfg.model.width}, frac={cfg.task.frac}, "
        f"seed {rep.get('seed')}, lr {rep.get('lr')}, wd {rep.get('weight_decay')}"
    )


def print_summary(s: RunSummary) -> None:
    """The short table `grokbasin run` prints before the run directory."""
    from rich.table import Table

    t = Table(title=f"grokbasin run {s.run.path.name}")
    for col in (
        "replica",
        "t_mem",
        "t_gen",
        "delay",
        "GSM",
        "regime",
        "peak LLC (epoch)",
        "final LLC",
    ):
        t.add_column(col)
    by_rep: dict[int, list[dict]] = {}
    for r in s.llc:
        by_rep.setdefault(r["replica"], []).append(r)
    for m in s.metrics:
        rows = by_rep.get(m["replica"], [])
        peak = max(rows, key=lambda r: r["llc_mean"]) if rows else None
        t.add_row(
            str(m["replica"]),
            _fmt(m.get("t_mem")),
            _fmt(m.get("t_gen")),
            _fmt(m.get("delay")),
            f"{m.get('gsm', float('nan')):.3f}",
            str(m.get("regime")),
            f"{peak['llc_mean']:.1f} ({peak['epoch']})" if peak else "-",
            f"{rows[-1]['llc_mean']:.1f} ± {rows[-1]['llc_std']:.1f}" if rows else "-",
        )
    console.print(t)
    th = s.theory
    parts = [
        f"{r['name']} = {r['value']:,.1f}"
        for r in th.get("closed_form", [])
        if r["name"].startswith("unified")
    ]
    num = th.get("numeric", {})
    if "llc_train" in num:
        parts.append(f"numeric rank(J_c)/2 = {num['llc_train']:,.1f}{_rank_note(num)}")
    if "laplace" in th:
        lap = th["laplace"]
        parts.append(f"λ_Lap = {lap['value']:,.1f}{_se_note(lap.get('stderr'))}")
    if parts:
        console.print(f"theory at epoch {th.get('epoch')}: " + "; ".join(parts))
    for line in s.health[:10]:
        console.print(f"[yellow]warning:[/yellow] {line}")
    if len(s.health) > 10:
        console.print(f"[yellow]warning:[/yellow] … {len(s.health) - 10} more in the report")
    console.print(f"report: {s.run.report}")


def _fmt(v: Any) -> str:
    return "-" if v is None else str(v)
