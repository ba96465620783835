"""Every file is bound to its run: an edited config.yaml, a checkpoint copied in from another run
or renamed to another epoch, a deleted checkpoint and a file rewritten without its checksum are
each refused in one line (exit 2) that says how to recover; nothing is sampled from them."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq

from grokbasin.store.rundir import read_parquet

LLC = ["--chains", "1", "--draws", "4", "--burnin", "2", "--llc-batch-size", "8", "--quiet"]


def test_edited_config_is_refused_by_every_command(pair, refused, run_cli, tmp_path):
    run = pair[0]
    run.config.write_text(run.config.read_text().replace("frac: 0.5", "frac: 0.8"))
    refused(["llc", str(run.path), *LLC], tmp_path, "edited", "undo the edit")
    refused(["report", str(run.path)], tmp_path, "edited")
    train_args = ["train", "--p", "11", "--frac", "0.5", "--width", "24", "--epochs", "60"]
    train_args += ["--checkpoint-every", "20", "--batch-size", "16", "--lr", "3e-3"]
    refused([*train_args, "--out", str(run.path.parent)], tmp_path, "edited")
    assert not run.llc.exists()


def test_checkpoint_from_another_run_is_refused(pair, refused, run_cli, tmp_path):
    a, b = pair
    shutil.copy(b.checkpoint(40), a.checkpoint(40))  # a valid checksum, the wrong run
    line = refused(["llc", str(a.path), *LLC], tmp_path, "belongs to run")
    assert b.path.name in line and a.path.name in line
    assert not a.llc.exists()


def test_checkpoint_renamed_to_another_epoch_is_refused(pair, refused, run_cli, tmp_path):
    run = pair[0]
    shutil.copy(run.checkpoint(60), run.checkpoint(20))
    refused(["llc", str(run.path), *LLC], tmp_path, "holds checkpoint 60, not 20")
    assert not run.llc.exists()


def test_deleted_checkpoint_is_named_and_the_run_can_be_retrained(pair, refused, run_cli, tmp_path):
    run = pair[0]
    before = read_parquet(run.metrics).to_pylist()
    run.checkpoint(20).unlink()
    refused(["llc", str(run.path), *LLC], tmp_path, "epochs [20]", "--repair")
    assert not run.is_trained()
    rc, _, err = run_cli(["runs", "--repair", str(run.path)], tmp_path)
    assert rc == 0, err
    assert run.is_trained() and run.checkpoint(20).exists()
    assert read_parquet(run.metrics).to_pylist() == before


def test_parquet_rewritten_without_checksum_needs_the_flag(
    pair, refused, run_cli, tmp_path, monkeypatch
):
    run = pair[0]
    table = pq.read_table(run.metrics)
    meta = {k: v for k, v in table.schema.metadata.items() if b"sha256" not in k}
    pq.write_table(table.replace_schema_metadata(meta), run.metrics)
    refused(["llc", str(run.path), *LLC], tmp_path, "no checksum", "--unverified-ok")
    monkeypatch.setenv("GROKBASIN_UNVERIFIED_OK", "0")  # restored after the test
    rc, _, err = run_cli(["--unverified-ok", "llc", str(run.path), *LLC], tmp_path)
    assert rc == 0, err
    assert read_parquet(run.llc).num_rows == 4


TRAIN = [
    *("train", "--p", "11", "--frac", "0.5", "--width", "24", "--epochs", "60"),
    *("--checkpoint-every", "20", "--batch-size", "16", "--lr", "3e-3", "--quiet"),
]


def listed(run_cli, root, cwd) -> dict[str, dict]:
    import json

    rc, out, err = run_cli(["runs", "--out", str(root), "--json"], cwd)
    assert rc == 0, err
    return {r["run"]: r for r in json.loads(out)}


def test_a_folder_recreated_without_its_config_is_listed_and_retrained(pair, run_cli, tmp_path):
    """Deleted mid-train and recreated: `runs` lists it with its problem, `train` retrains it."""
    run = pair[0]
    metrics = read_parquet(run.metrics).to_pylist()
    run.config.unlink()
    run.checkpoint(0).unlink()
    row = listed(run_cli, run.path.parent, tmp_path)[run.path.name]
    assert row["status"] == "damaged" and "config.yaml" in row["problem"]
    rc, _, err = run_cli([*TRAIN, "--out", str(run.path.parent)], tmp_path)
    assert rc == 0 and "training it again" in err, err
    assert run.is_trained() and read_parquet(run.metrics).to_pylist() == metrics
    assert listed(run_cli, run.path.parent, tmp_path)[run.path.name]["problem"] is None


def test_an_unfinished_run_is_listed_and_removed_with_one_command(pair, run_cli, tmp_path):
    import json

    run = pair[0]
    prov = json.loads(run.provenance.read_text())
    run.provenance.write_text(json.dumps({**prov, "finished": False}))
    row = listed(run_cli, run.path.parent, tmp_path)[run.path.name]
    assert row["status"] == "partial" and "--repair" in row["problem"]
    rc, _, err = run_cli(["runs", "--remove", str(run.path)], tmp_path)
    assert rc == 0, err
    assert not run.path.exists() and run.path.name not in listed(run_cli, run.path.parent, tmp_path)
    rc, _, err = run_cli(["runs", "--remove", str(tmp_path)], tmp_path)  # not a run: untouched
    assert rc == 2 and tmp_path.exists()
