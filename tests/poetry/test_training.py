"""train() and train.py on tiny corpora: learning, exact resume, signals, errors, multi-device."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import train as train_cli
from rnnjax.poetry.checkpoint import load_model
from rnnjax.poetry.cli import config_from_args
from rnnjax.poetry.config import TrainConfig
from rnnjax.poetry.errors import UserError
from rnnjax.poetry.training import train

ROOT = Path(__file__).resolve().parents[2]
# A constant learning rate (each test names it), whatever train.py's default schedule is.
TINY = dict(epochs=1000, embedding_dim=8, hidden_dim=16, batch_size=8, schedule="constant", warmup_steps=0,
            sample_every=0, log_every=1, quiet=True, progress=False)


def _metrics(ckpt_dir):
    return [json.loads(line) for line in (Path(ckpt_dir) / "metrics.jsonl").read_text().splitlines()]


def _params(ckpt_dir, step=None):
    return load_model(ckpt_dir, step=step)[0].torch_state_dict()


def _tree_digest(folder):
    """Every file's path and content hash: 'nothing overwritten' made checkable."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_memorises_a_small_corpus(tiny_corpus, tmp_path):
    result = train(data=tiny_corpus, checkpoint_dir=tmp_path, lr=2e-2, max_steps=150, val_fraction=0.0,
                   save_every=0, sample_prefix="白日", **{**TINY, "sample_every": 150})
    losses = [m["loss"] for m in _metrics(tmp_path)]
    assert len(losses) == 150 and result.step == 150
    assert losses[0] > 3.5 and np.mean(losses[-5:]) < 0.5, (losses[0], losses[-5:])
    assert result.compiles["train"] <= 1  # one bucket length: at most one compile (0 if cached)
    # The greedy sample reproduces the memorised poem, as the tutorial's example.txt would show.
    assert (tmp_path / "samples.txt").read_text().startswith("150:白日依山尽，黄河入海流。")
    config = json.loads((tmp_path / "config.json").read_text())
    assert {"cell", "vocab_size", "embedding_dim", "hidden_dim", "num_layers", "dropout", "vocab",
            "data_fingerprint", "flags"} <= set(config)
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_resume_is_exact_and_checkpoint_round_trips(tiny_corpus, tmp_path):
    # Dropout on, so the per-step random key has to resume too; 3 -> 6 crosses an epoch boundary.
    kw = dict(TINY, data=tiny_corpus, dropout=0.3, lr=1e-2, save_every=0)
    straight = train(checkpoint_dir=tmp_path / "a", max_steps=6, **kw)
    first = train(checkpoint_dir=tmp_path / "b", max_steps=3, **kw)
    assert first.step == 3
    resumed = train(checkpoint_dir=tmp_path / "b", max_steps=6, **kw)
    assert straight.step == resumed.step == 6
    a, b = _params(tmp_path / "a", 6), _params(tmp_path / "b", 6)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert [m["loss"] for m in _metrics(tmp_path / "a")] == [m["loss"] for m in _metrics(tmp_path / "b")]
    # load_model without a step takes the best validation loss; the params differ from step 3's.
    assert not np.array_equal(_params(tmp_path / "b", 3)["linear1.weight"], b["linear1.weight"])


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_other_cells_train(tiny_corpus, tmp_path, cell):
    result = train(data=tiny_corpus, checkpoint_dir=tmp_path, cell=cell, lr=2e-2, max_steps=25,
                   val_fraction=0.0, save_every=0, **TINY)
    losses = [m["loss"] for m in _metrics(tmp_path)]
    assert result.step == 25 and np.mean(losses[-3:]) < 0.8 * losses[0]
    model, vocab, config = load_model(tmp_path)
    assert config["cell"] == cell and model.cell == cell


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_corpus, tmp_path):
    # lr 1e38: the first update is finite but enormous (~1e38), the next loss overflows.
    with pytest.raises(UserError, match=r"non-finite loss \(loss nan\) at step 2: .* last good checkpoint is step 1"):
        train(data=tiny_corpus, checkpoint_dir=tmp_path, lr=1e38, max_steps=10, save_every=1, **TINY)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["1"]


def test_mismatched_checkpoint_is_refused_untouched(tiny_corpus, tmp_path, capsys):
    train(data=tiny_corpus, checkpoint_dir=tmp_path, max_steps=2, save_every=0, **TINY)
    before = _tree_digest(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--data", tiny_corpus, "--checkpoint-dir", str(tmp_path), "--embedding-dim", "8",
                        "--hidden-dim", "32", "--batch-size", "8", "--max-steps", "4", "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "hidden_dim 16 -> 32" in err, err
    assert _tree_digest(tmp_path) == before


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        train_cli.parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--cell", "--epochs", "--batch-size", "--lr", "--clip", "--embedding-dim", "--hidden-dim",
                 "--num-layers", "--dropout", "--seed", "--data", "--checkpoint-dir", "--max-steps",
                 "--time-budget", "--eval-every", "--sample-every", "--sample-prefix", "--distributed"):
        assert flag in out, flag


def test_flags_and_defaults_come_from_train_config():
    assert config_from_args(TrainConfig, train_cli.parse_args([])) == TrainConfig()
    args = train_cli.parse_args(["--cell", "gru", "--max-steps", "7", "--time-budget", "1.5", "--distributed"])
    assert config_from_args(TrainConfig, args) == TrainConfig(cell="gru", max_steps=7, time_budget=1.5,
                                                              distributed=True)
    with pytest.raises(UserError, match=r"^--batch-size must be a positive integer, got 0$"):
        TrainConfig(batch_size=0)
    with pytest.raises(UserError, match=r"^--val-fraction must be in \[0, 1\), got 1.0$"):
        train(TrainConfig(), val_fraction=1.0)


def _env(devices=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}" if devices else ""
    return env


def test_sigint_saves_and_rerun_resumes(tiny_corpus, tmp_path, capsys):
    cmd = [sys.executable, str(ROOT / "train.py"), "--data", tiny_corpus, "--checkpoint-dir", str(tmp_path),
           "--embedding-dim", "8", "--hidden-dim", "16", "--batch-size", "8", "--max-steps", "1000000",
           "--save-every", "0", "--sample-every", "0", "--log-every", "1", "--val-fraction", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    output = []
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:  # wait until training has really begun
            output.append(line)
            if line.startswith("step 3/") or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    output = "".join(output) + rest
    assert proc.returncode == 130, output
    assert "stopped by SIGINT" in output, output
    saved = [int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and saved[0] >= 3, output
    capsys.readouterr()
    result = train(data=tiny_corpus, checkpoint_dir=tmp_path, max_steps=saved[0] + 2, val_fraction=0.0,
                   save_every=0, **{**TINY, "quiet": False})
    assert f"resuming from step {saved[0]}" in capsys.readouterr().out
    assert result.step == saved[0] + 2


SCRIPT = """
import json, sys, jax
from rnnjax.poetry.training import train
train(data=sys.argv[1], checkpoint_dir=sys.argv[2], max_steps=3, save_every=0, val_fraction=0.0,
      embedding_dim=8, hidden_dim=16, batch_size=8, schedule="constant", warmup_steps=0, sample_every=0,
      log_every=1, quiet=True, progress=False)
print(json.dumps({"devices": jax.device_count()}))
"""


def test_two_devices_match_one(tiny_corpus, tmp_path):
    run = subprocess.run([sys.executable, "-c", SCRIPT, tiny_corpus, str(tmp_path / "two")], cwd=ROOT,
                         env=_env(devices=2), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == {"devices": 2}
    train(data=tiny_corpus, checkpoint_dir=tmp_path / "one", max_steps=3, save_every=0, val_fraction=0.0, **TINY)
    two = [m["loss"] for m in _metrics(tmp_path / "two")]
    one = [m["loss"] for m in _metrics(tmp_path / "one")]
    assert len(one) == len(two) == 3
    np.testing.assert_allclose(two, one, atol=1e-5, rtol=0)


def test_lr_schedule_warmup_then_decay_to_the_floor():
    from rnnjax.poetry.training import lr_schedule

    def rates(steps, **flags):
        f = lr_schedule(TrainConfig(lr=4e-3, **flags), 110)
        return np.array([float(f(s)) for s in steps])

    np.testing.assert_allclose(rates([0, 50, 109, 500], schedule="constant", warmup_steps=0), 4e-3, rtol=1e-6)
    # Warmup: lr/10, 2 lr/10, ... reaching lr at step 9; then the decay starts from lr.
    np.testing.assert_allclose(rates(range(11), schedule="cosine", warmup_steps=10)[:10],
                               4e-3 * np.arange(1, 11) / 10, rtol=1e-5)
    # Decay over steps 10..110 (the run's last step by default), to lr_floor * lr, and held there.
    mid = 10 + 50
    cos = rates([10, mid, 110, 400], schedule="cosine", warmup_steps=10, lr_floor=0.25)
    np.testing.assert_allclose(cos, [4e-3, 4e-3 * (0.25 + 0.75 * 0.5), 1e-3, 1e-3], rtol=1e-5)
    lin = rates([0, 55, 110, 400], schedule="linear", warmup_steps=0, lr_floor=0.0)
    np.testing.assert_allclose(lin, [4e-3, 2e-3, 0.0, 0.0], rtol=1e-5, atol=1e-9)
    # --decay-steps moves the end of the decay.
    np.testing.assert_allclose(rates([30, 60], schedule="linear", warmup_steps=0, decay_steps=30, lr_floor=0.5),
                               2e-3, rtol=1e-5)


def test_schedule_flags_are_checked():
    with pytest.raises(UserError, match=r"^--schedule must be one of constant, cosine, linear, got 'exp'$"):
        TrainConfig(schedule="exp")
    with pytest.raises(UserError, match=r"^--lr-floor must be in \[0, 1\]"):
        TrainConfig(lr_floor=1.5)
    with pytest.raises(UserError, match=r"^--decay-steps must be an integer above --warmup-steps \(100\)"):
        TrainConfig(warmup_steps=100, decay_steps=50)
    with pytest.raises(UserError, match=r"^--warmup-steps must be an integer >= 0"):
        TrainConfig(warmup_steps=-1)
    args = train_cli.parse_args(["--schedule", "cosine", "--warmup-steps", "5", "--decay-steps", "90",
                                 "--lr-floor", "0.05"])
    assert config_from_args(TrainConfig, args) == TrainConfig(schedule="cosine", warmup_steps=5, decay_steps=90,
                                                              lr_floor=0.05)


def test_scheduled_run_follows_the_schedule_and_resumes_exactly(tiny_corpus, tmp_path):
    from rnnjax.poetry.training import lr_schedule

    kw = dict(TINY, data=tiny_corpus, lr=1e-2, schedule="cosine", warmup_steps=2, lr_floor=0.1, save_every=0)
    train(checkpoint_dir=tmp_path / "a", max_steps=8, **kw)
    train(checkpoint_dir=tmp_path / "b", max_steps=4, **{**kw, "decay_steps": 8})
    train(checkpoint_dir=tmp_path / "b", max_steps=8, **kw)  # decay_steps None again: the run's end, 8
    a, b = _params(tmp_path / "a", 8), _params(tmp_path / "b", 8)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    schedule = lr_schedule(TrainConfig(**{k: kw[k] for k in ("lr", "schedule", "warmup_steps", "lr_floor")}), 8)
    logged = [m["lr"] for m in _metrics(tmp_path / "a")]
    np.testing.assert_allclose(logged, [float(schedule(s)) for s in range(8)], rtol=1e-6)
    assert logged[0] < logged[1] == max(logged) and logged[-1] < 0.2 * logged[1]
    changes = json.loads((tmp_path / "b" / "config.json").read_text())["flag_changes"]
    assert changes == [{"step": 4, "flag": "decay_steps", "from": 8, "to": None}]
