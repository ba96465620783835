"""Hostile-but-realistic inputs: one line, exit code 2, nothing half-made. Sizes too large for
the machine are refused with the estimate by every command that allocates by user-given sizes;
empty SQL, absurd step numbers, duplicate YAML keys, empty config files, pickled objects in a
checkpoint and a failed Ray start are each one line."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from grokbasin.errors import GrokbasinError

HUGE = ["--chains", "100000000", "--quiet"]


def test_llc_with_absurd_chains_is_refused_before_anything_is_written(pair, refused, tmp_path):
    run = pair[0]
    config = run.config.read_bytes()
    refused(["llc", str(run.path), *HUGE], tmp_path, "needs about", "100,000,000")
    refused(["llc", "calibrate", str(run.path), *HUGE], tmp_path, "needs about")
    assert run.config.read_bytes() == config and not run.llc.exists()
    assert not (run.path / "calibration").exists()


def test_external_with_absurd_chains_makes_no_run_folder(external_inputs, refused, tmp_path):
    refused(["llc", "external", *external_inputs, *HUGE], tmp_path, "needs about")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_sweep_with_absurd_chains_is_refused_before_training(refused, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "base: {task: {p: 7, frac: 0.6}, model: {width: 8}, train: {epochs: 20, batch_size: 8}}\n"
        "llc: {chains: 100000000}\n"
    )
    refused(["sweep", str(sweep), "--out", str(tmp_path / "runs")], tmp_path, "needs about")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("sql", ["", "   ", "\n\t", "-- only a comment", ";"])
def test_empty_sql_is_one_line(sql, refused, tmp_path):
    refused(["runs", "--out", str(tmp_path), "--sql", sql], tmp_path, "--sql")


def test_absurd_step_in_a_file_name_is_refused_before_any_folder(external_inputs, refused):
    ck = Path(external_inputs[external_inputs.index("--checkpoints") + 1])
    (ck / "s_10.pt").rename(ck / "step_99999999999999999999.pt")
    out = Path(external_inputs[external_inputs.index("--out") + 1])
    refused(["llc", "external", *external_inputs], ck, "step_99999999999999999999.pt")
    assert not out.exists() or not any(out.iterdir())


def test_duplicate_yaml_keys_and_an_empty_config_are_refused(refused, tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("train:\n  lr: 0.001\n  epochs: 10\n  lr: 0.1\n")
    refused(["train", "--config", str(dup), "--out", str(tmp_path / "r")], tmp_path, "duplicate")
    for text in ("", "\n# nothing here\n"):
        empty = tmp_path / "empty.yaml"
        empty.write_text(text)
        refused(["train", "--config", str(empty), "--out", str(tmp_path / "r")], tmp_path, "empty")
    assert not (tmp_path / "r").exists()


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_in_a_checkpoint_are_refused_without_torchs_advice(
    external_inputs, refused
):
    ck = Path(external_inputs[external_inputs.index("--checkpoints") + 1])
    torch.save({"weight": _Payload()}, ck / "s_50.pt")
    line = refused(["llc", "external", *external_inputs], ck, "s_50.pt", "refused")
    assert "weights_only=False" not in line and "weights_only" not in line


def test_wrong_architecture_checkpoint_names_the_file(pair, refused, tmp_path):
    run = pair[0]
    run.save_checkpoint(40, {"U": torch.zeros(1, 3, 3)}, {"epoch": 40, "step": 0})
    refused(
        ["llc", str(run.path), "--chains", "1", "--quiet"], tmp_path, "epoch_40", "architecture"
    )


def test_a_failed_ray_start_is_one_line(monkeypatch):
    from grokbasin.experiments.backends import run_ray

    def init(**kw):
        raise ConnectionError("could not connect to 10.0.0.1:6379\nmore detail")

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=init)
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(GrokbasinError, match=r"could not start Ray at 10\.0\.0\.1.*connect") as e:
        run_ray(abs, [1], address="10.0.0.1:6379")
    assert "\n" not in str(e.value)


def test_sql_output_is_capped_and_streams_to_a_file(run_cli, tmp_path):
    import json

    big = "SELECT range AS x FROM range(250000)"
    rc, out, err = run_cli(["runs", "--out", str(tmp_path), "--sql", big, "--limit", "5"], tmp_path)
    assert rc == 0 and "249,995 more rows not shown" in err, err
    assert "│ 4 " in out and "│ 5 " not in out
    rc, out, _ = run_cli(["runs", "--out", str(tmp_path), "--sql", big, "--csv"], tmp_path)
    lines = out.splitlines()
    assert rc == 0 and lines[0] == "x" and len(lines) == 250001 and lines[-1] == "249999"
    for name in ("all.json", "all.csv", "all.parquet"):
        path = tmp_path / name
        rc, _, err = run_cli(
            ["runs", "--out", str(tmp_path), "--sql", big, "--output", str(path)], tmp_path
        )
        assert rc == 0, err
    assert len(json.loads((tmp_path / "all.json").read_text())) == 250000
    assert len((tmp_path / "all.csv").read_text().splitlines()) == 250001
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "all.parquet").num_rows == 250000
