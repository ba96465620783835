"""The same reports as Markdown, with figures as relative PNG links, for `grokbasin report`.

Text is HTML-escaped (a Markdown renderer passes raw HTML through) and table cells have their
pipes escaped. Figures given as bytes or Figures are written next to the Markdown file.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from grokbasin.report.html import (
    Image,
    Section,
    Table,
    as_image,
    as_table,
    format_value,
    is_number,
    png_bytes,
    run_report_sections,
    slug,
    table_columns,
)
from grokbasin.store.rundir import atomic_write


def md_text(text: Any) -> str:
    """Escape text for Markdown: HTML-escape, and no line breaks inside one paragraph."""
    return html.escape(str(text), quote=False)


def md_cell(v: Any) -> str:
    """One table cell: formatted, escaped, pipes and newlines made safe."""
    return md_text(format_value(v)).replace("|", "\\|").replace("\n", " ")


def md_table(t: Table) -> str:
    """A GitHub-flavoured Markdown table, numeric columns right-aligned."""
    cols = table_columns(t)
    if not cols:
        return "_(no rows)_"
    numeric = [
        all(is_number(r.get(c)) or r.get(c) is None for r in t.rows)
        and any(is_number(r.get(c)) for r in t.rows)
        for c in cols
    ]
    lines = [
        "| " + " | ".join(md_cell(c) for c in cols) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(md_cell(r.get(c)) for c in cols) + " |" for r in t.rows]
    title = f"**{md_text(t.title)}**\n\n" if t.title else ""
    return title + "\n".join(lines)


def md_section(s: Section, files: dict[str, bytes], figure_dir: str) -> str:
    """One section as Markdown; PNGs that need writing are added to ``files``."""
    out = [f"## {md_text(s.heading)}"]
    if s.warnings:
        n = len(s.warnings)
        out.append(
            f"> **⚠ {n} warning{'s' * (n != 1)}**\n>\n"
            + "\n".join(f"> - {md_text(w)}" for w in s.warnings)
        )
    elif s.ok:
        out.append(f"> ✓ {md_text(s.ok)}")
    out.extend(md_text(p) for p in s.paragraphs)
    out.extend(md_table(as_table(t)) for t in s.tables)
    for i, f in enumerate(s.figures):
        img = as_image(f, i)
        out.append(
            f"![{md_text(img.caption)}]({_link(img, files, figure_dir)})\n\n"
            f"_{md_text(img.caption)}_"
        )
    return "\n\n".join(out)


def _link(img: Image, files: dict[str, bytes], figure_dir: str) -> str:
    """Relative link for an image, scheduling its PNG to be written when it has no path."""
    if img.path is not None:
        return Path(img.path).as_posix()
    stem = slug(img.caption)[:60]
    rel = f"{figure_dir}/{stem}.png"
    k = 2
    while rel in files:
        rel, k = f"{figure_dir}/{stem}-{k}.png", k + 1
    files[rel] = png_bytes(img)
    return rel


def render_markdown(
    title: str,
    sections: Sequence[Section],
    subtitle: str | None = None,
    figure_dir: str = "figures",
) -> tuple[str, dict[str, bytes]]:
    """Markdown text and the PNG files (relative path -> bytes) it links that must be written."""
    files: dict[str, bytes] = {}
    parts = [f"# {md_text(title)}"]
    if subtitle:
        parts.append(f"_{md_text(subtitle)}_")
    parts.extend(md_section(s, files, figure_dir) for s in sections)
    return "\n\n".join(parts) + "\n", files


def write_markdown(
    path: str | Path,
    title: str,
    sections: Sequence[Section],
    subtitle: str | None = None,
    figure_dir: str = "figures",
) -> Path:
    """Write the Markdown report and any PNGs it links (atomically, relative to its folder)."""
    path = Path(path)
    text, files = render_markdown(title, sections, subtitle, figure_dir)
    for rel, data in files.items():
        target = path.parent / rel
        if not (target.exists() and target.read_bytes() == data):
            atomic_write(target, data)
    atomic_write(path, text.encode("utf-8"))
    return path


def build_run_markdown(
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
) -> tuple[str, dict[str, bytes]]:
    """The standard run report as Markdown; figure paths are relative to the run directory."""
    run = Path(run_dir_path)
    sections = run_report_sections(
        config, metrics_summary, theory_rows, llc_summary, health, figures, provenance, dashboard
    )
    return render_markdown(title or f"grokbasin run {run.name}", sections, subtitle=str(run))


def write_run_markdown(
    run_dir_path: str | Path,
    config: Mapping[str, Any],
    metrics_summary: Sequence[Mapping[str, Any]],
    theory_rows: Sequence[Mapping[str, Any]],
    llc_summary: Sequence[Mapping[str, Any]],
    health: Sequence[str],
    figures: Mapping[str, bytes | Figure | str | Path],
    provenance: Mapping[str, Any] | None = None,
    name: str = "report.md",
    dashboard: Section | None = None,
) -> Path:
    """Write RUN_DIR/report.md (and figures/*.png for figures given as bytes)."""
    run = Path(run_dir_path)
    text, files = build_run_markdown(
        run,
        config,
        metrics_summary,
        theory_rows,
        llc_summary,
        health,
        figures,
        provenance,
        dashboard=dashboard,
    )
    for rel, data in files.items():
        if not ((run / rel).exists() and (run / rel).read_bytes() == data):
            atomic_write(run / rel, data)
    atomic_write(run / name, text.encode("utf-8"))
    return run / name
