"""Self-contained HTML reports: sections of text, tables, embedded PNG figures and health warnings.

A report is one file with inline CSS and figures as base64 data URIs: no scripts, no external
assets, so it can be mailed or archived and still render. All text is escaped. The same
:class:`Section` list renders to Markdown in :mod:`grokbasin.report.markdown`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from grokbasin.store.rundir import atomic_write

# ---------------------------------------------------------------------------------------------
# Report content model (shared with markdown.py).


@dataclass
class Table:
    """Rows of dicts rendered as one table; columns default to the keys in first-seen order."""

    rows: list[dict[str, Any]]
    title: str | None = None
    columns: list[str] | None = None


@dataclass
class Image:
    """A figure: PNG bytes or a matplotlib Figure, and/or a path (Markdown links the path)."""

    caption: str
    data: bytes | Figure | None = None
    path: str | None = None


@dataclass
class Section:
    """One report section; warnings are shown first and prominently."""

    heading: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table | list[dict[str, Any]]] = field(default_factory=list)
    figures: list[Image | Figure | bytes] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ok: str | None = None


def as_table(t: Table | Sequence[Mapping[str, Any]]) -> Table:
    """Normalise a list of dicts to a Table."""
    return t if isinstance(t, Table) else Table([dict(r) for r in t])


def as_image(f: Image | Figure | bytes, index: int = 0) -> Image:
    """Normalise a Figure or PNG bytes to an Image with a default caption."""
    if isinstance(f, Image):
        return f
    return Image(caption=f"Figure {index + 1}", data=f)


def table_columns(t: Table) -> list[str]:
    """Column order: explicit, else every key in first-seen order."""
    if t.columns is not None:
        return list(t.columns)
    cols: dict[str, None] = {}
    for row in t.rows:
        cols.update(dict.fromkeys(row))
    return list(cols)


# ---------------------------------------------------------------------------------------------
# Value formatting.


def is_number(v: Any) -> bool:
    """True for ints and floats (not bools), the cells that are right-aligned."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def format_value(v: Any) -> str:
    """Human-readable cell text: 4 significant digits, scientific for tiny/huge, — for missing."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
        v = v.item()  # numpy / torch scalars
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 100_000 else str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if v == 0:
            return "0"
        if abs(v) >= 1e7 or abs(v) < 1e-3:
            mant, exp = f"{v:.3e}".split("e")
            return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
        if abs(v) >= 1000:
            return f"{v:,.0f}" if abs(v) >= 100_000 else f"{v:.0f}"
        return f"{v:.4g}"
    if isinstance(v, list | tuple):
        if not v:
            return "—"
        return ", ".join(format_value(x) for x in v)
    if isinstance(v, Mapping):
        return json.dumps(v, default=str)
    return str(v)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict to dotted keys (lists kept as values)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_tables(config: Mapping[str, Any]) -> list[Table]:
    """One setting/value table per top-level config group (task, model, train, llc, ...)."""
    tables, loose = [], {}
    for group, v in config.items():
        if isinstance(v, Mapping):
            rows = [{"setting": k, "value": x} for k, x in flatten(v).items()]
            tables.append(Table(rows, title=str(group), columns=["setting", "value"]))
        else:
            loose[group] = v
    if loose:
        rows = [{"setting": k, "value": x} for k, x in loose.items()]
        tables.append(Table(rows, title="run", columns=["setting", "value"]))
    return tables


def slug(text: str) -> str:
    """Anchor id from a heading."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


# ---------------------------------------------------------------------------------------------
# HTML rendering.

CSS = """
:root { --fg:#1d2430; --muted:#5b6573; --line:#e3e7ee; --bg:#ffffff; --band:#f6f8fb;
        --warn-bg:#fff4e5; --warn-line:#e69f00; --ok-bg:#eaf7ef; --ok-line:#009e73; }
* { box-sizing: border-box; }
body { margin:0; background:var(--band); color:var(--fg);
       font:15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; background: var(--bg);
       min-height: 100vh; box-shadow: 0 0 0 1px var(--line); }
header h1 { margin: 0 0 4px; font-size: 26px; }
header p.sub { margin: 0; color: var(--muted); font-size: 13px; word-break: break-all; }
nav { margin: 14px 0 8px; font-size: 13px; }
nav a { color: #0061a6; text-decoration: none; margin-right: 14px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px;
     border-bottom: 2px solid var(--line); }
h3 { font-size: 14px; margin: 16px 0 6px; color: var(--muted); text-transform: uppercase;
     letter-spacing: .04em; }
p { margin: 6px 0 10px; }
.tables { display: flex; flex-wrap: wrap; gap: 10px 28px; align-items: flex-start; }
.tbl { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0 12px; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; }
th { background: var(--band); font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:hover { background: #fafbfd; }
figure { margin: 14px 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.warn { background: var(--warn-bg); border-left: 5px solid var(--warn-line);
        padding: 10px 14px; margin: 10px 0 14px; border-radius: 3px; }
.warn strong { display: block; margin-bottom: 4px; }
.warn ul { margin: 0; padding-left: 20px; }
.ok { background: var(--ok-bg); border-left: 5px solid var(--ok-line); padding: 8px 14px;
      margin: 10px 0 14px; border-radius: 3px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


def _esc(text: Any) -> str:
    """Escape any value's text for HTML."""
    return html.escape(str(text), quote=True)


def png_bytes(img: Image) -> bytes:
    """PNG bytes of an Image (rendering a Figure or reading its path)."""
    if isinstance(img.data, bytes):
        return img.data
    if isinstance(img.data, Figure):
        from grokbasin.report.figures import figure_png

        return figure_png(img.data)
    if img.path is not None:
        return Path(img.path).read_bytes()
    raise ValueError(f"figure {img.caption!r} has neither data nor a path")


def data_uri(png: bytes) -> str:
    """A base64 data URI for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def html_table(t: Table) -> str:
    """One table as HTML, numbers right-aligned and formatted."""
    cols = table_columns(t)
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = []
    for row in t.rows:
        cells = []
        for c in cols:
            v = row.get(c)
            cls = ' class="num"' if is_number(v) else ""
            cells.append(f"<td{cls}>{_esc(format_value(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    title = f"<h3>{_esc(t.title)}</h3>" if t.title else ""
    empty = "" if t.rows else "<p><em>(no rows)</em></p>"
    return (
        f'<div class="tbl">{title}<table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>{empty}</div>"
    )


def html_section(s: Section) -> str:
    """One section as HTML."""
    out = [f'<section id="{slug(s.heading)}"><h2>{_esc(s.heading)}</h2>']
    if s.warnings:
        items = "".join(f"<li>{_esc(w)}</li>" for w in s.warnings)
        out.append(
            f'<div class="warn" role="alert"><strong>⚠ {len(s.warnings)} warning'
            f"{'s' * (len(s.warnings) != 1)}</strong><ul>{items}</ul></div>"
        )
    elif s.ok:
        out.append(f'<div class="ok">✓ {_esc(s.ok)}</div>')
    out.extend(f"<p>{_esc(p)}</p>" for p in s.paragraphs)
    if s.tables:
        out.append(
            '<div class="tables">' + "".join(html_table(as_table(t)) for t in s.tables) + "</div>"
        )
    for i, f in enumerate(s.figures):
        img = as_image(f, i)
        out.append(
            f'<figure><img src="{data_uri(png_bytes(img))}" alt="{_esc(img.caption)}">'
            f"<figcaption>{_esc(img.caption)}</figcaption></figure>"
        )
    out.append("</section>")
    return "\n".join(out)


def render_run_report(
    title: str, sections: Sequence[Section], subtitle: str | None = None, footer: str | None = None
) -> str:
    """A complete self-contained HTML document for the given sections."""
    from grokbasin import __version__

    nav = " ".join(f'<a href="#{slug(s.heading)}">{_esc(s.heading)}</a>' for s in sections)
    sub = f'<p class="sub">{_esc(subtitle)}</p>' if subtitle else ""
    foot = _esc(footer) if footer else f"Generated by grokbasin {_esc(__version__)}."
    body = "\n".join(html_section(s) for s in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body><main>\n"
        f"<header><h1>{_esc(title)}</h1>{sub}</header>\n<nav>{nav}</nav>\n{body}\n"
        f"<footer>{foot}</footer>\n</main></body>\n</html>\n"
    )


render_report = render_run_report
"""Alias: the renderer is not specific to runs (sweeps and experiments use it too)."""


def write_report(
    path: str | Path, title: str, sections: Sequence[Section], subtitle: str | None = None
) -> Path:
    """Render and write an HTML report atomically; returns the path."""
    path = Path(path)
    atomic_write(path, render_run_report(title, sections, subtitle).encode("utf-8"))
    return path


# ---------------------------------------------------------------------------------------------
# The standard run report.


def run_report_sections(
    config: Mapping[str, Any],
    metrics_summary: Sequence[Mapping[str, Any]],
    theory_rows: Sequence[Mapping[str, Any]],
    llc_summary: Sequence[Mapping[str, Any]],
    health: Sequence[str],
    figures: Mapping[str, bytes | Figure | str | Path],
    provenance: Mapping[str, Any] | None = None,
    dashboard: Section | None = None,
) -> list[Section]:
    """Sections of a run report: health, the sampler dashboard (when given), figures, grokking
    metrics, LLC, theory, config.

    figures maps a caption to PNG bytes, a Figure, or a path (relative paths are kept for
    Markdown; HTML reads them, so pass bytes or absolute paths when rendering HTML).
    """
    has_llc = len(llc_summary) > 0
    health_sec = Section(
        "Sampler health",
        warnings=list(health),
        ok=(
            "All sampler health checks passed (finite losses, no explosion, λ̂ ≥ 0, "
            "chains agree, enough effective samples)."
            if has_llc
            else None
        ),
        paragraphs=[] if has_llc else ["No LLC estimates yet, so no sampler checks ran."],
    )
    images = [
        Image(
            caption=name,
            data=v if isinstance(v, bytes | Figure) else None,
            path=None if isinstance(v, bytes | Figure) else str(v),
        )
        for name, v in figures.items()
    ]
    sections = [
        health_sec,
        *([dashboard] if dashboard is not None else []),
        Section(
            "Figures",
            figures=list(images),
            paragraphs=[] if images else ["No figures were produced."],
        ),
        Section(
            "Grokking metrics",
            tables=[Table(list(map(dict, metrics_summary)))],
            paragraphs=[
                "t_mem: first checkpoint with train accuracy ≥ 0.99; t_gen: first "
                "with validation accuracy ≥ 0.95; delay = t_gen − t_mem; "
                "GSM: grokking severity measure (paper A §6.4)."
            ],
        ),
        Section(
            "LLC estimates",
            tables=[Table(list(map(dict, llc_summary)))] if has_llc else [],
            paragraphs=[
                "SGLD estimates λ̂ = nβ·(E[L_B(w)] − L_n(w*)) use training data "
                "only; absolute values are comparable only at fixed sampler "
                "settings (paper A App. B.2)."
                if has_llc
                else "No LLC estimates for this run."
            ],
        ),
        Section(
            "Theory",
            tables=[Table(list(map(dict, theory_rows)))] if theory_rows else [],
            paragraphs=[
                "Closed forms count identifiable coordinates over a generic input "
                "distribution; the numeric rank(J)/2 counts what the training data "
                "can resolve and is the relevant bound on one-hot modular data "
                "(SPEC §3.4)."
            ],
        ),
        Section("Configuration", tables=config_tables(config)),
    ]
    if provenance:
        sections.append(
            Section(
                "Provenance",
                tables=[
                    Table(
                        [{"field": k, "value": v} for k, v in flatten(provenance).items()],
                        columns=["field", "value"],
                    )
                ],
            )
        )
    return sections


def build_run_report(
    run_dir_path: str | Path,
    config: Mapping[str, Any],
    metrics_summary: Sequence[Mapping[str, Any]],
    theory_rows: Sequence[Mapping[str, Any]],
    llc_summary: Sequence[Mapping[str, Any]],
    health: Sequence[str],
    figures: Mapping[str, bytes | Figure | str | Path],
    provenance: Mapping[str, Any] | None = None,
    title: str | None = None,
    dashboard: Section | None = None,
) -> str:
    """The standard self-contained HTML report of one run (see :func:`run_report_sections`)."""
    run = Path(run_dir_path)
    resolved = {
        k: (v if isinstance(v, bytes | Figure) or Path(v).is_absolute() else run / v)
        for k, v in figures.items()
    }
    sections = run_report_sections(
        config, metrics_summary, theory_rows, llc_summary, health, resolved, provenance, dashboard
    )
    return render_run_report(title or f"grokbasin run {run.name}", sections, subtitle=str(run))


def write_run_report(
    run_dir_path: str | Path,
    config: Mapping[str, Any],
    metrics_summary: Sequence[Mapping[str, Any]],
    theory_rows: Sequence[Mapping[str, Any]],
    llc_summary: Sequence[Mapping[str, Any]],
    health: Sequence[str],
    figures: Mapping[str, bytes | Figure | str | Path],
    provenance: Mapping[str, Any] | None = None,
    dashboard: Section | None = None,
) -> Path:
    """Write RUN_DIR/report.html atomically (see :func:`build_run_report`); returns its path."""
    path = Path(run_dir_path) / "report.html"
    text = build_run_report(
        run_dir_path,
        config,
        metrics_summary,
        theory_rows,
        llc_summary,
        health,
        figures,
        provenance,
        dashboard=dashboard,
    )
    atomic_write(path, text.encode("utf-8"))
    return path
