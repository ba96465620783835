"""Figures and reports: Fig.-3 layout, theory placement, PNG output, self-contained escaped HTML."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from grokbasin.errors import ConfigError
from grokbasin.report.figures import (
    band_stats,
    fmt_num,
    linear_fit,
    new_figure,
    plot_linear_fit,
    save_png,
    split_theory,
    trajectory_figure,
)
from grokbasin.report.html import (
    Section,
    Table,
    build_run_report,
    format_value,
    render_run_report,
    write_report,
)
from grokbasin.report.markdown import build_run_markdown, write_markdown
from grokbasin.store.query import Want, checkpoint_epochs, llc_arrays, metrics_arrays
from grokbasin.store.query import llc_rows as llc_rows_of
from grokbasin.store.rundir import write_parquet

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T_MEM, T_GEN = 300.0, 1500.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def synthetic_run(n_chains: int = 3) -> tuple[dict, dict]:
    """Memorisation (sigmoid at 250) then later generalisation (sigmoid at 1400)."""
    epoch = np.arange(0, 2001, 50, dtype=float)
    train_acc = _sigmoid((epoch - 250) / 20)
    val_acc = 0.05 + 0.95 * _sigmoid((epoch - 1400) / 40)
    metrics = {
        "epoch": epoch,
        "train_acc": train_acc,
        "val_acc": val_acc,
        "train_loss": 0.5 * (1 - train_acc) + 1e-4,
        "val_loss": 0.6 * (1 - val_acc) + 1e-3,
    }
    bump = 200 + 600 * _sigmoid((epoch - 250) / 40) - 400 * _sigmoid((epoch - 1400) / 80)
    rng = np.random.default_rng(0)
    llc = {
        "epoch": epoch,
        "llc": bump[:, None] * (1 + 0.05 * rng.standard_normal((len(epoch), n_chains))),
    }
    return metrics, llc


def _vlines_at(ax, x: float) -> int:
    return sum(
        1
        for ln in ax.get_lines()
        if len(set(np.atleast_1d(ln.get_xdata()))) == 1
        and math.isclose(float(np.atleast_1d(ln.get_xdata())[0]), x)
    )


def _all_text(fig) -> str:
    parts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    return "\n".join(parts)


def test_trajectory_has_three_panels_with_marks_on_each():
    metrics, llc = synthetic_run()
    fig = trajectory_figure(metrics, llc, marks={"t_mem": T_MEM, "t_gen": T_GEN}, title="synth")
    axes = fig.get_axes()
    assert len(axes) == 3
    for ax in axes:  # exact: a vertical line whose x data is the mark epoch
        assert _vlines_at(ax, T_MEM) == 1
        assert _vlines_at(ax, T_GEN) == 1
    assert axes[0].get_yscale() == "log"
    text = _all_text(fig)
    assert "SGLD" in text and "min–max" in text  # the caption/legend names the quantity and band


def test_trajectory_without_llc_has_two_panels():
    metrics, _ = synthetic_run()
    fig = trajectory_figure(metrics, None, theory=[{"name": "closed form", "value": 10.0}])
    assert len(fig.get_axes()) == 2
    assert "closed form = 10" in _all_text(fig)


def test_off_scale_theory_is_noted_not_drawn():
    metrics, llc = synthetic_run()
    vals = np.asarray(llc["llc"])
    top = float(vals.max())
    far = 100 * (top - float(vals.min()))  # 100x the plotted range: far outside 3x
    near = 1.2 * top
    theory = [{"name": "closed form K(3p−1)/2", "value": far}, {"name": "numeric", "value": near}]
    fig = trajectory_figure(metrics, llc, theory=theory, marks={"t_mem": T_MEM})
    ax_llc = fig.get_axes()[2]
    hlines = [
        float(np.atleast_1d(ln.get_ydata())[0])
        for ln in ax_llc.get_lines()
        if len(np.atleast_1d(ln.get_ydata())) == 2 and len(set(np.atleast_1d(ln.get_ydata()))) == 1
    ]
    assert any(math.isclose(h, near) for h in hlines)  # exact: the on-scale one is drawn
    assert not any(math.isclose(h, far) for h in hlines)
    assert f"closed form K(3p−1)/2 = {fmt_num(far)} (off scale)" in _all_text(fig)
    assert ax_llc.get_ylim()[1] < far  # the far value did not stretch the axis


def test_split_theory_factor():
    on, off = split_theory(
        [
            {"name": "a", "value": 290.0},
            {"name": "b", "value": 310.0},
            {"name": "c", "value": 30.0},
            {"name": "d", "value": 35.0},
        ],
        lo=100.0,
        hi=100.0,
    )
    # range [100, 100]; the 3x window is [33.3, 300] (exact boundaries)
    assert [t["name"] for t in on] == ["a", "d"]
    assert [t["name"] for t in off] == ["b", "c"]


def test_band_stats_ignores_nonfinite_chains():
    v = np.array([[1.0, 3.0, np.nan], [2.0, 2.0, 2.0]])
    mean, lo, hi = band_stats(v, "minmax")
    np.testing.assert_allclose(mean, [2.0, 2.0])  # exact arithmetic
    np.testing.assert_allclose(lo, [1.0, 2.0])
    np.testing.assert_allclose(hi, [3.0, 2.0])
    mean, lo, hi = band_stats(v, "std")
    np.testing.assert_allclose(hi - mean, [1.0, 0.0], atol=1e-12)


def test_linear_fit_and_plot_label():
    x = np.arange(10.0)
    slope, intercept, r2 = linear_fit(x, 3 * x + 1)
    assert abs(slope - 3) < 1e-9 and abs(intercept - 1) < 1e-9 and abs(r2 - 1) < 1e-12
    fig, axes = new_figure()
    plot_linear_fit(axes[0, 0], x, 2 * x, color="k", label="K=600")
    axes[0, 0].legend()
    assert "$R^2$ = 1.000" in _all_text(fig)


def test_sample_result_running_matches_definition():
    # the running estimate lives on SampleResult (report.figures.running_llc was a duplicate)
    from grokbasin.llc.estimate import SampleResult

    one = np.array([0.5])
    res = SampleResult(
        n=10,
        nbeta=np.array([2.0]),
        traces=np.array([[1.0, 3.0, 2.0]]),
        init_loss=one,
        full_init_loss=one,
        first_batch_loss=one,
        diverged=np.array([False]),
    )
    np.testing.assert_allclose(res.running, [[1.0, 3.0, 3.0]])  # 2*(1-0.5), 2*(2-0.5), 2*(2-0.5)


def test_save_png_written_atomically(tmp_path: Path):
    fig = trajectory_figure(synthetic_run()[0], title="png")
    path = tmp_path / "figs" / "trajectory.png"
    data = save_png(fig, path)
    assert path.read_bytes() == data and data[:8] == PNG_MAGIC
    assert not list(path.parent.glob("*.tmp"))  # atomic write leaves no temp file


def test_query_selects_replica_sampler_nbeta_into_arrays(tmp_path: Path):
    """store.query picks one replica / sampler hash / nβ and pivots it into figure arrays."""
    metrics_rows = [
        {
            "epoch": e,
            "step": e,
            "replica": r,
            "seed": r,
            "lr": 1e-3,
            "weight_decay": 1e-4,
            "train_loss": 0.1 + r,
            "train_acc": 0.5,
            "val_loss": 0.2,
            "val_acc": 0.1,
        }
        for e in (100, 0)
        for r in (0, 1)
    ]
    grid = [
        ("old", 0, 26.0),
        ("old", 100, 26.0),
        ("new", 0, 26.0),
        ("new", 100, 26.0),
        ("new", 100, 50.0),
    ]  # newest hash last; nβ 26 has the most rows, 50 is a sweep extra
    llc_rows = [
        {
            "epoch": e,
            "replica": r,
            "chain": c,
            "nbeta": nb,
            "llc": 10.0 * c + e + nb + (1000.0 if h == "old" else 0.0),
            "init_loss": 0.0,
            "mean_loss": 0.0,
            "rhat": 1.0,
            "ess": 100.0,
            "trend": 0.0,
            "flags": "rhat" if (e == 100 and c == 1) else "",
            "sampler_hash": h,
        }
        for h, e, nb in grid
        for r in (0, 1)
        for c in (0, 1)
    ]
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for e in (0, 100):  # checkpoint names are what 'llc.checkpoints' is parsed against
        (run / "checkpoints" / f"epoch_{e}.safetensors").touch()
    write_parquet(run / "llc.parquet", llc_rows)

    def select(replica=None, **kw):
        (rows,) = llc_rows_of([Want(run, replica=None if replica == "all" else replica, **kw)])
        return metrics_arrays(metrics_rows, replica), llc_arrays(rows)

    m, ll = select(replica=1)
    np.testing.assert_array_equal(m["epoch"], [0, 100])  # sorted by epoch
    np.testing.assert_allclose(m["train_loss"], [1.1, 1.1])
    assert ll is not None and ll["sampler"]["nbeta"] == 26.0  # most frequent nβ by default
    np.testing.assert_allclose(ll["llc"], [[26.0, 36.0], [126.0, 136.0]])
    assert ll["flagged"].tolist() == [False, True]
    _, ll50 = select(replica=0, nbeta=50.0, sampler_hash="new")
    assert ll50 is not None
    np.testing.assert_allclose(ll50["epoch"], [100.0])
    np.testing.assert_allclose(ll50["llc"], [[150.0, 160.0]])
    _, old = select(sampler_hash="old")
    assert old is not None and old["llc"][0, 0] == 1026.0
    m_all, ll_all = select(replica="all")
    np.testing.assert_allclose(m_all["train_loss"], [0.6, 0.6])  # mean of 0.1 and 1.1
    assert ll_all is not None and ll_all["llc"].shape == (2, 4)  # 2 replicas x 2 chains
    # one nβ tolerance (relative 1e-6) and one checkpoint parser for every reader
    (near,) = llc_rows_of([Want(run, "new", 26.0 * (1 + 1e-7), checkpoints="100", replica=0)])
    assert sorted({r["epoch"] for r in near}) == [100] and {r["nbeta"] for r in near} == {26.0}
    assert llc_rows_of([Want(run, "new", 26.0 * (1 + 1e-5))]) == [[]]
    assert checkpoint_epochs([0, 100, 200], "last") == [200]
    assert checkpoint_epochs([0, 100, 200], "100, 300") == [100]
    with pytest.raises(ConfigError, match="no checkpoint for epochs"):
        checkpoint_epochs([0, 100], "100,300", strict=True)
    with pytest.raises(ConfigError, match="llc.checkpoints"):
        checkpoint_epochs([0, 100], "first")


def test_format_value():
    assert format_value(None) == "—" and format_value(float("nan")) == "—"
    assert format_value(1e-4) == "1e-4" and format_value(2415.0) == "2415"
    assert format_value(0.123456) == "0.1235" and format_value(True) == "yes"
    assert format_value(1_234_567) == "1,234,567"


def _report_inputs(fig_png: bytes) -> dict:
    return dict(
        config={
            "task": {"p": 23, "frac": 0.4},
            "train": {"note": "<script>alert(1)</script>"},
            "device": "cpu",
        },
        metrics_summary=[
            {"replica": 0, "t_mem": 300, "t_gen": 1500, "GSM": 0.41, "regime": "grokking"}
        ],
        theory_rows=[{"quantity": "closed form K(3p−1)/2", "value": 8704}],
        llc_summary=[{"epoch": 300, "llc": 812.5, "rhat": 1.3}],
        health=["epoch 300: chains disagree (R-hat 1.3 > 1.1)"],
        figures={"LLC trajectory": fig_png},
    )


@pytest.fixture(scope="module")
def fig_png() -> bytes:
    metrics, llc = synthetic_run()
    from grokbasin.report.figures import figure_png

    return figure_png(
        trajectory_figure(metrics, llc, marks={"t_mem": T_MEM, "t_gen": T_GEN}), dpi=60
    )


def test_html_report_self_contained_and_escaped(tmp_path: Path, fig_png: bytes):
    html = build_run_report(tmp_path, **_report_inputs(fig_png))
    assert "data:image/png;base64," in html and "<img" in html
    assert "<script>" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not re.search(r"https?://", html)  # no external assets of any kind
    assert 'class="warn"' in html and "R-hat 1.3 &gt; 1.1" in html  # health shown prominently
    assert "8704" in html and "812.5" in html
    out = write_report(tmp_path / "r.html", "t", [Section("s", tables=[Table([{"a": 1}])])])
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_html_report_without_llc_says_so(tmp_path: Path):
    html = render_run_report("x", [Section("a <b>", paragraphs=["1 < 2"])])
    assert "a &lt;b&gt;" in html and "1 &lt; 2" in html
    args = _report_inputs(b"")
    args.update(llc_summary=[], health=[], figures={})
    html = build_run_report(tmp_path, **args)
    assert "No LLC estimates" in html and 'class="warn"' not in html


def test_markdown_report_links_pngs(tmp_path: Path, fig_png: bytes):
    text, files = build_run_markdown(tmp_path, **_report_inputs(fig_png))
    assert "![LLC trajectory](figures/llc-trajectory.png)" in text
    assert files == {"figures/llc-trajectory.png": fig_png}
    assert "<script>" not in text and "| 8704 |" in text
    args = _report_inputs(fig_png)
    args["figures"] = {"LLC trajectory": "figures/trajectory.png"}
    text, files = build_run_markdown(tmp_path, **args)
    assert "(figures/trajectory.png)" in text and files == {}
    path = write_markdown(tmp_path / "rep" / "report.md", "t", [Section("Figs", figures=[fig_png])])
    assert (path.parent / "figures" / "figure-1.png").read_bytes()[:8] == PNG_MAGIC


def test_merge_equal_theory_values():
    from grokbasin.report.figures import merge_equal

    out = merge_equal(
        [
            {"name": "a", "value": 8704},
            {"name": "b", "value": 2415.0},
            {"name": "c", "value": 8704.0},
        ]
    )
    assert out == [{"name": "a, c", "value": 8704.0}, {"name": "b", "value": 2415.0}]


def test_sampler_line_names_a_data_refined_llc():
    """A data-refined estimate is labelled wherever the sampler settings are described; the
    plain LLC's line is as before."""
    from grokbasin.config import LLCConfig
    from grokbasin.report.figures import describe_sampler, sampler_settings

    plain = describe_sampler(sampler_settings(LLCConfig(), 100))
    refined = describe_sampler(sampler_settings(LLCConfig(data="val"), 100))
    assert "data-refined" not in plain
    assert refined == plain + ", data-refined: posterior loss on val pairs"
