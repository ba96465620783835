"""Named experiments: registry, outputs, fits on a tiny grid with a stand-in LLC estimator."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from grokbasin.errors import ConfigError
from grokbasin.experiments import common
from grokbasin.experiments import sweep as sw
from grokbasin.experiments.paper_a import critical_data_size, gsm, llc_scaling, sgld_sensitivity
from grokbasin.experiments.registry import Context, get, list_experiments, run_experiment
from grokbasin.report.figures import linear_fit
from grokbasin.store.rundir import RunDir, read_parquet, write_parquet

NAMES = {
    "llc-vs-p",
    "llc-vs-width",
    "trajectory-robustness",
    "gsm-vs-lr",
    "gsm-vs-weight-decay",
    "critical-data-size",
    "sgld-sensitivity",
}


def test_registry_lists_every_paper_a_experiment():
    names = {e.name for e in list_experiments()}
    assert NAMES <= names
    assert all(e.description for e in list_experiments())
    with pytest.raises(ConfigError, match="choose one of"):
        get("fig99")
    with pytest.raises(ConfigError, match="--scale"):
        run_experiment("llc-vs-p", scale="huge")


@pytest.fixture
def linear_llc(monkeypatch):
    """Estimator stand-in: LLC = 1.5·K·p exactly, so the fit must recover slope 1.5·K vs p."""

    def estimate(run_dirs, llc_cfg, device="cpu", progress=True):
        for d in run_dirs:
            run = RunDir(d)
            cfg = read_parquet(run.metrics)  # run exists and is trained
            assert cfg.num_rows
            import yaml

            c = yaml.safe_load(run.config.read_text())
            val = 1.5 * c["model"]["width"] * c["task"]["p"]
            old = read_parquet(run.llc).to_pylist() if run.llc.exists() else []
            e = sw.selected_epochs(run, llc_cfg)[-1]
            nb = llc_cfg.resolve_nbeta(int(c["task"]["frac"] * c["task"]["p"] ** 2))
            new = [
                {
                    "epoch": e,
                    "replica": 0,
                    "chain": ch,
                    "nbeta": nb,
                    "llc": val + ch - 0.5,
                    "sampler_hash": llc_cfg.sampler_hash(),
                }
                for ch in (0, 1)
            ]
            write_parquet(run.llc, old + new)

    monkeypatch.setattr(sw, "_estimator", lambda: estimate)


def _scaling(name, x, series, xs, values, root, train, llc, frac):
    """Run a scaling experiment on a tiny grid (one seed, one sampler) through the registry."""
    grid = llc_scaling.scaling_grid(name, x, series, xs, values, train, {"tiny": llc}, frac, [0])
    return get(name).run(Context(root, "tiny"), grid)


def test_llc_scaling_fits_recover_the_slope_and_write_outputs(tmp_path, linear_llc, monkeypatch):
    # 20-epoch runs do not generalise; treat every last checkpoint as a solution so all are fitted
    monkeypatch.setattr(
        common, "solution_epoch", lambda rows: (max(r["epoch"] for r in rows), True)
    )
    train = {"epochs": 20, "checkpoint_every": 10, "batch_size": 0, "lr": [3e-3]}
    llc = {"chains": 2, "draws": 5, "batch_size": 16, "checkpoints": "last"}
    res = _scaling(
        "llc-vs-p", "task.p", "model.width", [11, 13, 17], [8, 16], tmp_path, train, llc, 0.5
    )
    # exact linear data (chain offsets ±0.5 cancel in the mean): slope 1.5·K, R² = 1 to 1e-9
    by_k = {s["width"]: s for s in res.summary}
    assert by_k[8]["slope"] == pytest.approx(12.0, rel=1e-9)
    assert by_k[16]["slope"] == pytest.approx(24.0, rel=1e-9)
    assert by_k[16]["r2"] == pytest.approx(1.0, abs=1e-9)
    assert by_k[8]["theory_slope"] == 12.0
    png = res.figures["llc-vs-p"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Path(res.tables["llc-vs-p"]).open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {"p", "width", "llc", "theory_under"} <= set(rows[0])
    assert "<img" in res.report.read_text()
    # a second invocation does no new training or sampling and gives the same summary
    again = _scaling(
        "llc-vs-p", "task.p", "model.width", [11, 13, 17], [8, 16], tmp_path, train, llc, 0.5
    )
    assert again.summary == res.summary
    cfgs = sw.expand(
        sw.sweep_from_dict(
            {
                "base": {"task": {"frac": 0.5}, "train": train},
                "grid": {"task.p": [11], "model.width": [8]},
                "seeds": [0],
                "llc": llc,
            }
        )
    )
    assert sw.jobs_for(cfgs, tmp_path, True) == []


# ---------------------------------------------------------------- real estimator, tiny scale

_TINY_TRAIN = {
    "epochs": 30,
    "checkpoint_every": 10,
    "batch_size": 0,
    "lr": [1e-2],
    "weight_decay": [1e-4],
}
_TINY_LLC = {
    "chains": 2,
    "burnin": 5,
    "draws": 10,
    "step_size": 1e-3,
    "gamma": 30.0,
    "nbeta": 30.0,
    "batch_size": 16,
    "checkpoints": "last",
}


def _llc_mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.glob("*/llc.parquet")}


def _no_new_work(monkeypatch) -> None:
    """Make any training or sampling in a second invocation fail the test."""

    def boom(*a, **k):
        raise AssertionError("second invocation trained or sampled")

    monkeypatch.setattr(sw, "run_group", boom)
    monkeypatch.setattr(sw, "_estimator", lambda: boom)


@pytest.mark.parametrize(
    "name,xkey,skey,xs,series",
    [
        ("llc-vs-p", "task.p", "model.width", [5, 7, 11], [8]),
        ("llc-vs-width", "model.width", "task.p", [4, 8, 12], [7]),
    ],
)
def test_llc_scaling_end_to_end_with_the_real_estimator(
    tmp_path, monkeypatch, name, xkey, skey, xs, series
):
    res = _scaling(name, xkey, skey, xs, series, tmp_path, _TINY_TRAIN, _TINY_LLC, 0.6)
    assert res.figures[name].read_bytes()[:4] == b"\x89PNG"
    assert res.tables[name].exists() and res.report.exists()
    with res.tables[name].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(xs) * len(series)
    # the real SGLD estimate is finite at every point (tolerance: none, finiteness only)
    assert all(math.isfinite(float(r["llc"])) for r in rows)
    (s,) = res.summary
    # tiny runs rarely generalise, so fit every point here when too few did: refit from the CSV
    x = [float(r[xkey.split(".")[1]]) for r in rows]
    slope, _, r2 = linear_fit(x, [float(r["llc"]) for r in rows])
    assert math.isfinite(slope) and 0.0 <= r2 <= 1.0 + 1e-12  # R² in [0, 1] up to rounding
    assert s["theory_slope"] > 0
    before = _llc_mtimes(tmp_path)
    assert before
    _no_new_work(monkeypatch)
    again = _scaling(name, xkey, skey, xs, series, tmp_path, _TINY_TRAIN, _TINY_LLC, 0.6)
    assert _llc_mtimes(tmp_path) == before  # nothing re-sampled
    assert [r["slope"] for r in again.summary] == pytest.approx(
        [r["slope"] for r in res.summary], nan_ok=True
    )  # exact reuse: same numbers


def test_gsm_vs_lr_end_to_end_with_the_real_estimator(tmp_path, monkeypatch):
    base = {
        "task": {"p": 7, "frac": 0.6},
        "model": {"width": 8},
        "train": {**_TINY_TRAIN, "epochs": 20},
    }
    llc = {**_TINY_LLC, "checkpoints": "all"}
    grid = gsm.gsm_grid("gsm-vs-lr", "train.lr", [3e-3, 1e-2], base, [0, 1], llc)
    res = get("gsm-vs-lr").run(Context(tmp_path, "tiny"), grid)
    assert res.figures["gsm-vs-lr"].read_bytes()[:4] == b"\x89PNG"
    with res.tables["gsm-vs-lr"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4  # 2 lrs x 2 seeds
    for r in rows:  # GSM at the epoch budget: ≥ 0, and 0 exactly where the run never generalised
        assert float(r["gsm_budget"]) >= 0
        assert r["generalised"] == "True" or float(r["gsm_budget"]) == 0.0
    agg = res.summary[2:]
    assert [a["value"] for a in agg] == [3e-3, 1e-2]
    assert all(math.isfinite(a["max_llc_mean"]) for a in agg)  # finiteness only
    # GSM is nan where no seed generalised (tiny runs), else ≥ 0
    assert all(math.isnan(a["gsm_mean"]) or a["gsm_mean"] >= 0 for a in agg)
    before = _llc_mtimes(tmp_path)
    _no_new_work(monkeypatch)
    again = get("gsm-vs-lr").run(Context(tmp_path, "tiny"), grid)
    assert _llc_mtimes(tmp_path) == before
    assert repr(again.summary[2:]) == repr(agg)  # same numbers (repr: nan == nan)


def test_gsm_vs_lr_at_several_weight_decays_with_thinned_llc(tmp_path):
    """Fig. 11's form: one GSM curve (and fit) per weight decay; the LLC is sampled only at the
    thinned checkpoints chosen after training (dense start, then every N, and the last)."""
    base = {
        "task": {"p": 7, "frac": 0.6},
        "model": {"width": 8},
        "train": {**_TINY_TRAIN, "epochs": 20, "checkpoint_every": 5},
    }
    grid = gsm.gsm_grid(
        "gsm-vs-lr",
        "train.lr",
        [3e-3, 1e-2],
        base,
        [0],
        {**_TINY_LLC, "checkpoints": "all"},
        series=("train.weight_decay", [1e-4, 1e-3]),
        llc_thin={"dense_until": 0, "every": 10},
    )
    res = get("gsm-vs-lr").run(Context(tmp_path, "tiny"), grid)
    assert res.figures["gsm-vs-lr"].read_bytes()[:4] == b"\x89PNG"
    fits, agg = res.summary[:4], res.summary[4:]
    assert [(f["series"], f["fit"][:6]) for f in fits][::2] == [(1e-4, "ln gsm"), (1e-3, "ln gsm")]
    assert [(a["series"], a["value"]) for a in agg] == [
        (1e-4, 3e-3),
        (1e-4, 1e-2),
        (1e-3, 3e-3),
        (1e-3, 1e-2),
    ]
    for c in common.grid_configs(grid, Context(tmp_path)):
        have = RunDir(tmp_path / c.run_hash()).checkpoint_epochs()
        sampled = {
            int(r["epoch"]) for r in read_parquet(RunDir(tmp_path / c.run_hash()).llc).to_pylist()
        }
        assert sampled == set(common.thinned_epochs(have, 0, 10)) and sampled < set(have)


def test_sgld_sensitivity_cells_one_call_cached(tmp_path, monkeypatch):
    from grokbasin.config import build_config
    from grokbasin.llc import calibrate as cal
    from grokbasin.train.runner import train

    cfg = build_config(
        {},
        {
            "task.p": 7,
            "model.width": 8,
            "train.epochs": 30,
            "train.checkpoint_every": 10,
            "train.batch_size": 0,
            "train.lr": [1e-2],
        },
    )
    run = train(cfg, tmp_path, progress=False).run
    calls = []
    real = cal.calibrate
    monkeypatch.setattr(cal, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    llc = {**_TINY_LLC, "draws": 30}
    rows = sgld_sensitivity.sensitivity_cells(
        run.path, 30, llc, [1e-4, 1e-3], [1.0, 300.0], tmp_path / "cache"
    )
    assert len(calls) == 1  # the whole ε × γ grid in one sampler call
    assert [(r["step_size"], r["gamma"]) for r in rows] == [
        (1e-4, 1.0),
        (1e-4, 300.0),
        (1e-3, 1.0),
        (1e-3, 300.0),
    ]
    assert all(math.isfinite(r["llc"]) for r in rows)
    by = {(r["step_size"], r["gamma"]): r["llc"] for r in rows}
    # strong localisation (γ = 300) shrinks the excursion: λ̂ drops (no tolerance: ordering only)
    assert by[(1e-3, 300.0)] < by[(1e-3, 1.0)]
    again = sgld_sensitivity.sensitivity_cells(
        run.path, 30, llc, [1e-4, 1e-3], [1.0, 300.0], tmp_path / "cache"
    )
    assert len(calls) == 1 and again == rows  # cached: no new sampling, identical rows


def test_critical_data_size_batch_falls_back_to_full_batch():
    # p = 17, frac 0.1 has 28 training samples < 128: full batch (0); p = 23, frac 0.6 has 317
    assert critical_data_size.batch_for(128, 17, 0.1) == 0
    assert critical_data_size.batch_for(128, 23, 0.6) == 128
    assert critical_data_size.batch_for(0, 23, 0.6) == 0


def test_paper_grids_keep_the_papers_settings_and_record_what_was_trimmed():
    """SPEC §3.3/§3.9: p, K, frac, optimiser, lr, wd, batch and sampler exactly; device auto."""
    from grokbasin.config import build_config

    paper_sampler = {"step_size": 5e-4, "gamma": 5.0, "nbeta": 26.4, "chains": 3}
    paper_sampler |= {"burnin": 100, "draws": 500, "batch_size": 128}
    paper_ps = {53, 59, 61, 67, 71, 73, 79, 83, 89, 97}
    for exp in (get(n) for n in sorted(NAMES)):
        grid = exp.grids["paper"]
        assert grid["device"] == "auto" and isinstance(grid["trim"], str) and grid["trim"]
        ctx = Context(Path("unused"), "paper", device="cpu")
        for label, llc in common.samplers(grid).items() or {"none": None}.items():
            for c in common.grid_configs(grid, ctx, llc):
                t = c.train
                assert (t.optimizer, t.batch_size, t.early_stop) == ("adam", 128, True) or (
                    exp.name == "trajectory-robustness" and t.batch_size == 256
                )
                if exp.name != "critical-data-size":
                    assert c.task.frac == 0.4
                if exp.name in ("llc-vs-p", "llc-vs-width"):
                    assert c.task.p in paper_ps | {53, 61, 71}
                    assert (t.lr, t.weight_decay) == ([1e-4], [1e-5])
                if llc is not None and label == "paper":
                    got = c.llc.model_dump(include=set(paper_sampler))
                    assert got == paper_sampler
        if exp.name in ("llc-vs-p", "llc-vs-width", "trajectory-robustness"):
            s = common.samplers(grid)
            assert list(s) == ["paper", "calibrated"]  # side by side, paper's first
            assert (s["calibrated"]["step_size"], s["calibrated"]["gamma"]) == (
                2e-3,
                100.0,
            )  # llc calibrate at paper-fig3
    llc_p = get("llc-vs-p").grids["paper"]
    assert llc_p["grid"]["model.width"] == [600, 1000, 1400]
    assert set(llc_p["grid"]["task.p"]) <= paper_ps
    assert get("llc-vs-width").grids["paper"]["grid"]["model.width"] == list(range(200, 1601, 200))
    sens = get("sgld-sensitivity").grids["paper"]["sampler"]
    assert {k: sens[k] for k in paper_sampler} == paper_sampler
    cds = get("critical-data-size").grids["paper"]
    assert {pt["task.p"] for pt in cds["points"]} <= {53, 67, 79, 83, 101, 103}
    assert build_config(cds["base"], {}).model.width == 1024


def test_plot_takes_plain_rows_and_boundary_known_answer():
    """plot(Output) needs no run directory; the boundary is the midpoint fail → success."""
    from grokbasin.experiments.registry import Output

    rows = [
        {"p": 17, "scaled": s, "val_acc": a, "regime": r}
        for s, a, r in [
            (1.0, 0.05, "no generalisation"),
            (2.5, 0.4, "no generalisation"),
            (3.0, 0.99, "grokking"),
            (4.0, 1.0, "immediate generalisation"),
        ]
    ]
    b = critical_data_size.boundary(rows)
    assert b == pytest.approx(2.75, abs=1e-12)  # (2.5 + 3.0) / 2
    out = Output({"critical-data-size": rows}, [{"boundary_scaled_size": b}])
    out.facts = {"ps": [17], "width": 128, "budget": "4000 passes"}
    (fig,) = critical_data_size.plot(out).values()
    assert "boundary ≈ 2.75" in fig.axes[0].get_legend_handles_labels()[1]
    assert "≤4000 passes" in fig.axes[0].get_title()
    assert math.isnan(critical_data_size.boundary(rows[:2]))  # no success: no boundary


def test_every_paper_trim_reaches_the_report(tmp_path):
    # paper A wrote "trimmed" while the report read "trim": every stated deviation was lost
    import html
    from dataclasses import replace

    from grokbasin.experiments.experiment import Output

    paper_a = {"critical-data-size", "gsm-vs-lr", "gsm-vs-weight-decay", "llc-vs-p"}
    paper_a |= {"llc-vs-width", "sgld-sensitivity", "trajectory-robustness", "transformer"}
    for exp in list_experiments():
        if exp.name in paper_a:
            assert exp.grids["paper"]["trim"], exp.name
        for scale, grid in exp.grids.items():
            if not grid.get("trim"):
                continue
            quiet = replace(exp, compute=lambda g, ctx: Output({}), plot=lambda out: {})
            res = quiet.run(Context(tmp_path, scale), grid)
            assert f"Deviation from the paper's grid: {grid['trim']}." in res.notes
            assert html.escape(grid["trim"]) in res.report.read_text(), exp.name


def test_a_misspelt_grid_key_fails_when_the_grid_is_defined():
    from grokbasin.errors import ConfigError
    from grokbasin.experiments.experiment import Experiment, Output

    with pytest.raises(ConfigError, match="unknown key.*'trimmed'.*allowed:.*trim"):
        Experiment("x", "d", {"paper": {"seeds": [0], "trimmed": "one seed"}}, None, None)
    with pytest.raises(ConfigError, match="'seed'"):
        Experiment("x", "d", {"small": {"seed": [0]}}, lambda g, c: Output({}), dict)


def test_thinned_epochs_keep_the_dense_start_the_grid_and_the_last():
    from grokbasin.experiments.common import thinned_epochs

    have = list(range(0, 5301, 100))
    got = thinned_epochs(have, dense_until=1000, every=1000)
    assert got == [*range(0, 1001, 100), 2000, 3000, 4000, 5000, 5300]
    assert thinned_epochs([0, 100], 3000, 500) == [0, 100]
    assert thinned_epochs([0, 100, 200], 0, 1000, first=1) == [200]
