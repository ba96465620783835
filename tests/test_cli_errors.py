"""Bad input: one clear line naming the field, non-zero exit, no traceback, nothing written."""

import subprocess
import sys

import pytest

CASES = [
    (["--p", "12"], "task.p"),
    (["--p", "2"], "task.p"),
    (["--frac", "1.5"], "task.frac"),
    (["--frac", "0"], "task.frac"),
    (["--p", "11"], "train.batch_size"),  # 48 training samples < batch 128
    (["--width", "0"], "model.width"),
    (["--op", "pow"], "task.op"),
    (["--model", "resnet"], "model.name"),
    (["--loss", "hinge"], "train.loss"),
    (["--optimizer", "lion"], "train.optimizer"),
    (["--lr", "0"], "train.lr"),
    (["--lr", "-1e-3"], "train.lr"),
    (["--epochs", "0"], "train.epochs"),
    (["--checkpoint-every", "0"], "train.checkpoint_every"),
    (["--device", "cuda:7"], "device"),
    (["--config", "missing.yaml"], "missing.yaml"),
]


def _run(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "grokbasin", "train", *args], capture_output=True, text=True, cwd=cwd
    )


@pytest.mark.parametrize("args,field", CASES)
def test_bad_flag(tmp_path, args, field):
    res = _run([*args, "--out", "runs"], tmp_path)
    assert res.returncode == 2
    err = res.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert field in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "text,field",
    [
        ("task: [1", "invalid YAML"),
        ("task: {pp: 3}", "task.pp"),
        ("- just\n- a list\n", "mapping"),
        ("train: {epochs: many}", "train.epochs"),
    ],
)
def test_bad_config_file(tmp_path, text, field):
    (tmp_path / "c.yaml").write_text(text)
    res = _run(["--config", "c.yaml", "--out", "runs"], tmp_path)
    assert res.returncode == 2 and field in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "runs").exists()


def test_unreadable_config_file(tmp_path):
    (tmp_path / "c.yaml").write_bytes(b"\xff\xfe\x00bad")
    res = _run(["--config", "c.yaml", "--out", "runs"], tmp_path)
    assert res.returncode == 2 and "c.yaml" in res.stderr and "Traceback" not in res.stderr


def test_config_file_and_flags(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "task: {p: 11, frac: 0.5}\nmodel: {width: 8}\n"
        "train: {epochs: 4, checkpoint_every: 2, batch_size: 16}\n"
    )
    res = _run(
        ["--config", "c.yaml", "--epochs", "6", "--out", "runs", "--quiet", "--json"], tmp_path
    )
    assert res.returncode == 0, res.stderr
    import json

    summary = json.loads(res.stdout)
    assert summary["final_epoch"] == 6 and summary["status"] == "trained"
