"""Replica-batched training: equivalence, checkpoints, resume after SIGKILL, caching."""

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import torch

from grokbasin.errors import CorruptFileError
from grokbasin.store.rundir import RunDir
from grokbasin.train.runner import train, train_group


def _final(run: RunDir):
    return run.load_checkpoint(run.checkpoint_epochs()[-1])


def test_batched_replicas_equal_training_alone(tmp_path, tiny_cfg):
    batched = train(
        tiny_cfg(train__seeds=[0, 1], train__lr=[1e-3, 3e-3]), tmp_path / "a", progress=False
    )
    alone = train(tiny_cfg(train__seeds=[1], train__lr=[3e-3]), tmp_path / "b", progress=False)
    pb, pa = _final(batched.run), _final(alone.run)
    # replica order is seeds x lr: (1, 3e-3) is replica 3; float tolerance 1e-5 (same kernels)
    for k in pa:
        assert torch.allclose(pb[k][3], pa[k][0], atol=1e-5), k
    rows = pq.read_table(batched.run.metrics).to_pylist()
    assert {(r["seed"], r["lr"]) for r in rows} == {(0, 1e-3), (0, 3e-3), (1, 1e-3), (1, 3e-3)}


def test_group_of_runs_equals_each_run_alone(tmp_path, tiny_cfg):
    cfgs = [tiny_cfg(train__seeds=[0]), tiny_cfg(train__seeds=[1, 2], train__weight_decay=[1e-2])]
    group = train_group(cfgs, tmp_path / "g", progress=False)
    for cfg, res in zip(cfgs, group, strict=True):
        alone = train(cfg, tmp_path / "s", progress=False)
        assert res.run.path.name == alone.run.path.name  # same identity: the config hash
        for k, v in _final(alone.run).items():
            assert torch.allclose(_final(res.run)[k], v, atol=1e-5)


def test_early_stopped_member_does_not_depend_on_batch(tmp_path, tiny_cfg):
    stop = {
        "train__early_stop": True,
        "train__early_stop_patience": 2,
        "train__epochs": 100,
        "train__early_stop_val_acc": 0.0,
    }
    short = tiny_cfg(**stop)  # evals at epochs 0 and 20 qualify: stops at 20
    long = tiny_cfg(train__seeds=[5], train__epochs=100)
    a, b = train_group([short, long], tmp_path / "g", progress=False)
    assert a.final_epoch == 20 and b.final_epoch == 100
    alone = train(long, tmp_path / "s", progress=False)
    for k, v in _final(alone.run).items():
        assert torch.allclose(_final(b.run)[k], v, atol=1e-5)


def test_run_layout_and_checkpoint_round_trip(tmp_path, tiny_cfg):
    res = train(tiny_cfg(train__seeds=[0, 1]), tmp_path, progress=False)
    run = res.run
    assert run.path.name == tiny_cfg(train__seeds=[0, 1]).run_hash()
    assert run.config.exists() and run.provenance.exists() and run.metrics.exists()
    assert run.checkpoint_epochs() == [0, 20, 40, 60]
    params = run.load_checkpoint(60)
    assert params["W"].shape == (2, 22, 24) and params["V"].shape == (2, 11, 24)
    run.save_tensors(tmp_path / "copy.safetensors", params, {"epoch": 60})
    again, meta = run.load_tensors(tmp_path / "copy.safetensors")
    assert meta == {"epoch": 60} and all(torch.equal(again[k], params[k]) for k in params)
    rows = pq.read_table(run.metrics).to_pylist()
    assert len(rows) == 4 * 2
    assert set(rows[0]) >= {
        "epoch",
        "step",
        "replica",
        "seed",
        "lr",
        "weight_decay",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
    }


def test_finished_run_is_not_redone(tmp_path, tiny_cfg):
    cfg = tiny_cfg()
    assert train(cfg, tmp_path, progress=False).status == "trained"
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / cfg.run_hash()).rglob("*")}
    assert train(cfg, tmp_path, progress=False).status == "cached"
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / cfg.run_hash()).rglob("*")}
    assert before == after


def test_corrupt_checkpoint_is_reported(tmp_path, tiny_cfg):
    run = train(tiny_cfg(), tmp_path, progress=False).run
    run.checkpoint(40).write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptFileError, match="epoch_40"):
        run.load_checkpoint(40)


def _cli(out, *extra):
    args = [
        "--p",
        "11",
        "--frac",
        "0.5",
        "--width",
        "24",
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--epochs",
        "300",
        "--checkpoint-every",
        "10",
        "--seeds",
        "0,1",
        "--out",
        str(out),
        "--quiet",
    ]
    return [sys.executable, "-m", "grokbasin", "train", *args, *extra]


def test_sigkill_and_resume_equals_uninterrupted(tmp_path):
    ref = subprocess.run(_cli(tmp_path / "ref"), capture_output=True, text=True, check=True)
    ref_run = RunDir(ref.stdout.strip().splitlines()[-1])

    killed_root = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed_root), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run = RunDir(killed_root / ref_run.path.name)
    deadline = time.time() + 60
    while time.time() < deadline and len(run.checkpoint_epochs()) < 8:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not run.is_trained(), "the kill must land mid-run for this test to mean anything"
    assert 0 < max(run.checkpoint_epochs()) < 300

    done = subprocess.run(_cli(killed_root), capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == str(run.path)
    assert run.is_trained()
    a, b = _final(ref_run), _final(run)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical: all randomness is keyed
    ma = pq.read_table(ref_run.metrics).to_pylist()
    mb = pq.read_table(run.metrics).to_pylist()
    assert ma == mb
    assert not list(run.path.rglob("*.tmp"))  # the killed writer's temporaries are gone


def test_step_unit_takes_one_fresh_random_batch_per_unit(tmp_path, tiny_cfg):
    """train.unit=step is the authors' 'epoch': one optimiser step on B distinct training rows,
    a fresh draw each step; checkpoints and the metrics' step column count steps."""
    from grokbasin.train.loop import epoch_batches, make_setup

    cfg = tiny_cfg(train__unit="step", train__epochs=30, train__checkpoint_every=10)
    s = make_setup(cfg)
    draws = [list(epoch_batches(s, e)) for e in range(3)]
    assert all(len(d) == 1 for d in draws)  # one batch per unit
    b = s.batch_size
    train_rows = set(s.task.train_idx[0].tolist())
    for (rows,) in draws:
        got = rows[0].tolist()
        assert len(got) == b and len(set(got)) == b  # without replacement inside a batch
        assert set(got) <= train_rows
    assert draws[0][0][0].tolist() != draws[1][0][0].tolist()  # fresh each step

    res = train(cfg, tmp_path, progress=False)
    assert res.run.checkpoint_epochs() == [0, 10, 20, 30]
    rows = pq.read_table(res.run.metrics).to_pylist()
    assert [r["step"] for r in rows] == [r["epoch"] for r in rows]


def test_step_unit_changes_identity_but_pass_keeps_old_hashes(tiny_cfg):
    """The unit enters the run hash only when it is not the default 'pass': runs made before the
    field existed keep their directory."""
    from grokbasin.config import short_hash

    cfg = tiny_cfg()
    legacy = cfg.model_dump(include={"task", "model", "train"})
    del legacy["train"]["unit"]
    assert cfg.run_hash() == short_hash(legacy)
    assert tiny_cfg(train__unit="step").run_hash() != cfg.run_hash()


def test_authors_logged_loss_is_the_per_sample_output_centred_loss():
    """The authors evaluate one sample at a time, so their logged loss centres each residual over
    the p outputs and divides by p: 0.5·(1 − 1/p)/p at a zero output (0.0093 at p = 53; their
    log starts at 0.0091)."""
    from grokbasin.losses import authors_logged_mse

    p, n = 53, 40
    labels = torch.randint(0, p, (1, n))
    assert authors_logged_mse(torch.zeros(1, n, p), labels).item() == pytest.approx(
        0.5 * (1 - 1 / p) / p
    )
    pred = torch.randn(1, n, p)
    per_sample = []
    for i in range(n):
        e = torch.eye(p)[labels[0, i]] - pred[0, i]
        per_sample.append(0.5 * (e - e.mean()).square().sum() / p)
    assert authors_logged_mse(pred, labels).item() == pytest.approx(
        torch.stack(per_sample).mean().item(), rel=1e-5
    )
