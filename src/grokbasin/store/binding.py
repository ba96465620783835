"""A run directory's config bound to its run: the settings in config.yaml must hash to the run.

``config.yaml`` is what every command reads a run's task, model and training from, so an edited
one would silently change what is sampled or listed. :func:`run_config` is the one reader: it
refuses a config whose run hash is not the run's (recorded in provenance.json, else the folder
name for runs made before that), and a run with missing files, in one line saying how to
recover. :func:`problems` says the same for ``grokbasin runs`` without raising.
"""

from __future__ import annotations

import shutil

from grokbasin.config import RunConfig, build_config, load_yaml
from grokbasin.errors import CorruptFileError, GrokbasinError
from grokbasin.store.rundir import LOCK_NAME, RunDir


def remedy(run: RunDir) -> str:
    """The two one-command ways out for a damaged run."""
    if not run.config.exists():
        return (
            "re-run the command that trained it (it trains the run again) or delete it with "
            f"`grokbasin runs --remove {run.path}`"
        )
    return (
        f"retrain it with `grokbasin runs --repair {run.path}` or delete it with "
        f"`grokbasin runs --remove {run.path}`"
    )


def stored_config(run: RunDir) -> RunConfig:
    """config.yaml as written, refused when its settings are not this run's (an edit)."""
    if not run.config.exists():
        raise CorruptFileError(f"{run.path}: no config.yaml (not a complete run directory)")
    cfg = build_config(load_yaml(run.config))
    if cfg.run_hash() != run.identity():
        raise CorruptFileError(
            f"{run.config}: edited: its task/model/train settings hash to {cfg.run_hash()}, "
            f"not to this run {run.identity()}; undo the edit (files here were made with the "
            f"original settings), or train the new settings as their own run with "
            f"`grokbasin train --config FILE` on a copy"
        )
    return cfg


def run_config(run: RunDir) -> RunConfig:
    """The run's verified config; refused if config.yaml was edited or files are missing."""
    cfg = stored_config(run)
    missing = run.missing_files()
    if missing:
        raise CorruptFileError(f"{run.path}: missing {'; '.join(missing)}; {remedy(run)}")
    return cfg


def problems(run: RunDir) -> list[str]:
    """What is wrong with a run directory, one phrase each (empty: nothing)."""
    try:
        if run.config.exists() and "kind" not in load_yaml(run.config):
            stored_config(run)  # built-in runs; other kinds carry their own identity
        missing = run.missing_files()
    except GrokbasinError as e:
        return [str(e).removeprefix(f"{run.path}: ")]
    return [f"missing {m}" for m in missing]


def reset(run: RunDir) -> None:
    """Delete everything in the run directory but its lock (the caller holds it)."""
    for p in run.path.iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


RUN_FILES = {
    LOCK_NAME, "config.yaml", "provenance.json", "metrics.parquet", "llc.parquet", "checkpoints",
    "llc_traces", "figures", "report.html", "report.md", "theory.json", "calibration",
    "external.json",
}  # fmt: skip


def remove(run: RunDir) -> None:
    """Delete a run directory (refused while another process uses it, or if it holds other
    files than a run's: a mistyped path is never emptied)."""
    if not run.path.is_dir():
        raise GrokbasinError(f"{run.path}: no such run directory")
    foreign = [p.name for p in run.path.iterdir() if p.name not in RUN_FILES]
    foreign = [n for n in foreign if not (n.startswith(".") and n.endswith(".tmp"))]
    if foreign or not any(run.path.iterdir()):
        raise GrokbasinError(
            f"{run.path}: not a run directory (it holds {sorted(foreign)[:5]}); nothing removed"
        )
    with run.lock(wait=False):
        reset(run)
        (run.path / LOCK_NAME).unlink(missing_ok=True)
    run.path.rmdir()


def repair_config(run: RunDir) -> RunConfig:
    """The config a damaged or unfinished run is trained again from (``train.runner.repair``):
    its own config.yaml, refused for external, config-less and renamed runs."""
    if (run.path / "external.json").exists():
        raise GrokbasinError(
            f"{run.path}: an external run is repaired by running `grokbasin llc external` again"
        )
    if not run.config.exists():
        raise CorruptFileError(
            f"{run.path}: no config.yaml, so its settings are lost: re-run the command that "
            f"trained it (it trains the run again), or `grokbasin runs --remove {run.path}`"
        )
    cfg = stored_config(run)
    if cfg.run_hash() != run.path.name:
        raise GrokbasinError(
            f"{run.path}: a renamed run cannot be retrained in place; train its config.yaml "
            "with `grokbasin train --config` (it goes under its hash)"
        )
    return cfg
