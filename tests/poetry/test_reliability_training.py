"""Faults on the training side: damaged checkpoints, kill -9 at random moments, signals, read-only
folders, resumes with changed flags, and two real processes training together."""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import train as train_cli
from rnnjax.poetry import checkpoint as ckpt
from rnnjax.poetry import distributed, run_log, training
from rnnjax.poetry.checkpoint import DamagedCheckpoint, load_model
from rnnjax.poetry.config import TrainConfig
from rnnjax.poetry.errors import UserError
from rnnjax.poetry.training import train

ROOT = Path(__file__).resolve().parents[2]
# The optimiser these tests were written for, whatever train.py's defaults become.
TINY = dict(embedding_dim=8, hidden_dim=16, batch_size=8, lr=1e-3, schedule="constant", warmup_steps=0,
            sample_every=0, log_every=1, quiet=True, progress=False)
TINY_FLAGS = ["--embedding-dim", "8", "--hidden-dim", "16", "--batch-size", "8", "--lr", "1e-3", "--schedule",
              "constant", "--warmup-steps", "0", "--log-every", "1", "--no-progress"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """For the commands run here: 1 CPU device, and one JAX compilation cache for all of them (a start
    after the first loads the compiled programs: seconds less per command)."""
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", XLA_FLAGS="",
                RNNJAX_CACHE_DIR=str(tmp_path_factory.mktemp("jax-cache")))


def _metrics(ckpt_dir):
    return [json.loads(line) for line in (Path(ckpt_dir) / "metrics.jsonl").read_text().splitlines()]


def _params(ckpt_dir, step=None):
    return load_model(ckpt_dir, step=step)[0].torch_state_dict()


def _assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _steps(ckpt_dir):
    return sorted(int(p.name) for p in Path(ckpt_dir).iterdir() if p.name.isdigit())


# ---- damage -------------------------------------------------------------------------------------


def _biggest_data_file(step_dir: Path) -> Path:
    return max((step_dir / "params").rglob("d/*"), key=lambda p: p.stat().st_size)


def _damage(step_dir: Path, kind: str) -> Path:
    """Damage one params file of a step as a disk, a copy or a person might; returns the file."""
    target = step_dir / "params" / "manifest.ocdbt" if kind == "manifest" else _biggest_data_file(step_dir)
    data = target.read_bytes()
    if kind in ("truncated", "manifest"):
        target.write_bytes(data[: len(data) // 2])
    elif kind == "emptied":
        target.write_bytes(b"")
    elif kind == "deleted":
        target.unlink()
    elif kind == "flipped":
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0x10  # one bit, same size: only a checksum sees it
        target.write_bytes(bytes(flipped))
    return target


KINDS = ("truncated", "emptied", "deleted", "flipped", "manifest")


@pytest.fixture(scope="module")
def saved(tiny_corpus, tmp_path_factory):
    """A training folder (steps 1-3, each saved) and an export of it (float16)."""
    root = tmp_path_factory.mktemp("saved")
    train(data=tiny_corpus, checkpoint_dir=root / "train", max_steps=3, save_every=1, val_fraction=0.1,
          **{**TINY, "lr": 1e-2})
    model, _, config = load_model(root / "train")
    ckpt.export_model(root / "export", model, config, dtype="float16")
    return root


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_damage_is_one_line_naming_the_file(saved, tmp_path, kind):
    for name, step in (("train", 3), ("export", 0)):
        folder = tmp_path / name
        shutil.copytree(saved / name, folder)
        load_model(folder)  # intact: loads
        damaged = _damage(folder / str(step), kind)
        with pytest.raises(DamagedCheckpoint) as exc:
            load_model(folder)
        message = str(exc.value)
        assert "\n" not in message and str(damaged) in message, message
        assert ("missing" if kind == "deleted" else "damaged") in message, message


def test_checksums_are_recorded_for_steps_and_exports(saved):
    for folder, items in ((saved / "train" / "3", {"params", "train", "meta"}), (saved / "export" / "0",
                                                                                 {"params", "meta"})):
        files = json.loads((folder / ckpt.CHECKSUMS_NAME).read_text())["files"]
        assert {name.split("/")[0] for name in files} == items
        meta = json.loads((folder / "meta" / "metadata").read_text())
        assert any(k.startswith("params.") for k in meta["sha256"]), meta
    # The shipped model is an export of this version: it carries them too (folders without them still
    # load: the next test).
    assert (ROOT / "pretrained" / "tang-lstm" / "0" / ckpt.CHECKSUMS_NAME).exists()


def test_old_checkpoints_without_checksums_still_load_and_fail_in_one_line(saved, tmp_path):
    """A step saved before checksums existed: no checksums.json, no sha256 in meta."""
    old = tmp_path / "old"
    shutil.copytree(saved / "export", old)
    (old / "0" / ckpt.CHECKSUMS_NAME).unlink()
    meta_file = old / "0" / "meta" / "metadata"
    meta_file.write_text(json.dumps({"step": 0, "exported": True}))
    load_model(old)
    _damage(old / "0", "truncated")
    with pytest.raises(DamagedCheckpoint, match=r"^cannot read .*params: ") as exc:
        load_model(old)
    assert "\n" not in str(exc.value) and "TensorStore(" not in str(exc.value)
    (old / "0" / "params" / "manifest.ocdbt").write_bytes(b"")  # was: "does not match its config.json: stored None"
    with pytest.raises(DamagedCheckpoint, match=r"manifest\.ocdbt\) is missing or damaged"):
        load_model(old)


GENERATE_EACH = """
import sys, generate
for folder in sys.argv[1:]:
    try:
        generate.main(["--checkpoint", folder, "--prefix", "春", "--max-len", "12"])
        code = 0
    except SystemExit as e:
        code = e.code
    print(folder, code, flush=True)
"""


def test_generate_on_damaged_checkpoints_prints_one_line_and_exits_2(saved, tmp_path, env):
    """In a real process, so that anything orbax prints late (after a failed read) would show."""
    folders = []
    for kind in KINDS:
        folder = tmp_path / kind
        shutil.copytree(saved / "train", folder)
        _damage(folder / "3", kind)
        folders.append(folder)
    old = tmp_path / "old-truncated"  # no checksums: orbax itself meets the damage
    shutil.copytree(saved / "export", old)
    (old / "0" / ckpt.CHECKSUMS_NAME).unlink()
    _damage(old / "0", "truncated")
    folders.append(old)
    run = subprocess.run([sys.executable, "-c", GENERATE_EACH, *map(str, folders)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"{f} 2" for f in folders], run.stdout
    lines = run.stderr.splitlines()
    assert len(lines) == len(folders) and all(line.startswith("error: ") for line in lines), run.stderr
    for folder, line in zip(folders, lines):
        assert str(folder) in line, line


ORBAX_FILE = "/site-packages/orbax/checkpoint/_src/serialization/serialization.py"


def _defined_in(filename: str, code: str, **names):
    """The last function `code` defines, compiled as if from `filename` (which tracebacks and reprs name)."""
    space = dict(names)
    exec(compile(code, filename, "exec"), space)
    return space[code.rsplit("def ", 1)[1].split("(", 1)[0]]


def _unretrieved_task_log(coroutine) -> list[str]:
    """What asyncio's own handler logs, past checkpoint's leftover filter, for a task whose exception
    nobody retrieved."""
    import asyncio
    import gc
    import logging

    kept = []
    handler = logging.Handler()
    handler.emit = lambda record: kept.append(record.getMessage())
    handler.addFilter(ckpt._DropOrbaxLeftovers())
    log = logging.getLogger("asyncio")
    log.addHandler(handler)
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(coroutine())
        loop.run_until_complete(asyncio.sleep(0))
        del task  # asyncio logs "Task exception was never retrieved" when the task is collected
        gc.collect()
    finally:
        loop.close()
        log.removeHandler(handler)
    return kept


def test_orbax_reads_left_over_after_an_error_are_dropped_and_others_kept():
    """CI once printed a left-over async_deserialize task under the one-line error: the filter knew
    only another coroutine's name. It now matches orbax's path in the message or the traceback."""
    deserialize = _defined_in(ORBAX_FILE, "async def async_deserialize():\n    raise Exception("
                              "'Encountered error while reading array index. See full TensorStore details')\n")
    assert _unretrieved_task_log(deserialize) == []
    read_shard = _defined_in(ORBAX_FILE, "def read_shard():\n    raise ValueError('OUT_OF_RANGE')\n")
    gather = _defined_in("/somewhere/glue.py", "async def gather():\n    read_shard()\n", read_shard=read_shard)
    assert _unretrieved_task_log(gather) == []  # orbax named only in the traceback
    fetch = _defined_in("/home/user/app.py", "async def fetch():\n    raise ValueError('boom')\n")
    kept = _unretrieved_task_log(fetch)
    assert len(kept) == 1 and "never retrieved" in kept[0] and "boom" in kept[0], kept


def test_orbax_coroutines_failing_as_they_are_discarded_are_dropped_and_others_kept(monkeypatch):
    """The other leftover: a suspended read, discarded with its loop, raises as it closes ("Exception
    ignored in <coroutine ...>"), which goes to sys.unraisablehook."""
    import gc
    import logging

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [])
    ckpt._install_leftover_filters()
    code = ("import types\n@types.coroutine\ndef suspend():\n    yield\n"
            "async def {name}():\n    try:\n        await suspend()\n    finally:\n        raise ValueError('{name}')\n")
    for filename, name in ((ORBAX_FILE, "read_shard"), ("/home/user/app.py", "fetch")):
        coroutine = _defined_in(filename, code.format(name=name))()
        coroutine.send(None)  # suspended inside the try
        del coroutine
        gc.collect()
    assert seen == ["fetch"]


def test_resume_skips_a_damaged_latest_step(tiny_corpus, tmp_path, capsys):
    kw = dict(TINY, data=tiny_corpus, save_every=1, val_fraction=0.1, lr=1e-2)
    train(checkpoint_dir=tmp_path / "straight", max_steps=6, **kw)
    train(checkpoint_dir=tmp_path / "hurt", max_steps=4, **kw)
    _damage(tmp_path / "hurt" / "4", "flipped")
    capsys.readouterr()
    result = train(checkpoint_dir=tmp_path / "hurt", max_steps=6, **{**kw, "quiet": False})
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "skipping step 4" in warnings[0] and "damaged" in warnings[0], out
    assert "resuming from step 3" in out and result.step == 6
    assert (tmp_path / "hurt" / f"{ckpt.DAMAGED_PREFIX}4").is_dir()  # kept aside, not deleted
    _assert_same_params(_params(tmp_path / "hurt", 6), _params(tmp_path / "straight", 6))
    assert [m["step"] for m in _metrics(tmp_path / "hurt")] == list(range(1, 7))


# ---- kill -9 ------------------------------------------------------------------------------------


def _saving(folder: Path) -> bool:
    """Whether orbax is writing a step (its temporary folder exists)."""
    return any(".orbax-checkpoint-tmp" in p.name for p in folder.glob("*"))


def test_chaos_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(tiny_corpus, tmp_path, env, capfd):
    """SIGKILL 5 times (seeded): 3 kills the moment a save has begun (orbax's temporary step folder
    exists), 2 at a random moment after a randomly chosen step (in the step, a validation, a sample or a
    save). Each time the same command resumes (the last time in this process, to save a start-up).
    The end state must equal a run that was never interrupted, and the logs must hold each step once."""
    steps = 12
    flags = dict(max_steps=steps, save_every=1, sample_every=4, eval_every=3, val_fraction=0.1, lr=1e-2, dropout=0.3)
    folder = tmp_path / "chaos"
    cli = [sys.executable, str(ROOT / "train.py"), "--data", tiny_corpus, "--checkpoint-dir", str(folder),
           *TINY_FLAGS] + [x for k, v in flags.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    rng = random.Random(15)
    kills = []
    for attempt in range(5):
        log = tmp_path / f"run{attempt}.log"
        saved = _steps(folder) if folder.exists() else []
        with open(log, "w") as out:
            proc = subprocess.Popen(cli, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            try:
                if attempt % 2 == 0:  # the moment a save is under way
                    while proc.poll() is None and not _saving(folder):
                        time.sleep(0.002)
                else:  # a random moment after a random step, never the last ones
                    target = min((saved or [0])[-1] + rng.randint(1, 3), steps - 3)
                    while proc.poll() is None and f"step {target}/" not in log.read_text():
                        time.sleep(0.005)
                    time.sleep(rng.uniform(0.0, 0.15))
                saving = _saving(folder)
            finally:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, log.read_text()  # killed, not finished
        kills.append((_steps(folder), saving))
    assert sum(saving for _, saving in kills) >= 3, kills
    capfd.readouterr()
    assert train(data=tiny_corpus, checkpoint_dir=folder, **{**TINY, **flags, "quiet": False}).step == steps
    final = capfd.readouterr()
    for text in [final.out + final.err] + [(tmp_path / f"run{k}.log").read_text() for k in range(5)]:
        assert "Traceback" not in text and "WARNING" not in text and "warning:" not in text, text

    train(data=tiny_corpus, checkpoint_dir=tmp_path / "straight", **{**TINY, **flags})
    _assert_same_params(_params(tmp_path / "chaos", steps), _params(tmp_path / "straight", steps))
    chaos, straight = _metrics(tmp_path / "chaos"), _metrics(tmp_path / "straight")
    assert [m["step"] for m in chaos] == list(range(1, steps + 1))
    assert [m["loss"] for m in chaos] == [m["loss"] for m in straight]
    samples = [line.split(":")[0] for line in (tmp_path / "chaos" / "samples.txt").read_text().splitlines()]
    assert samples == ["4", "8", "12"]


def test_logs_written_after_the_last_save_are_dropped_on_resume(tiny_corpus, tmp_path):
    """As after a kill between logging a step and saving it: metrics and samples hold steps 3-4, the last
    saved step is 2. On resume they go (and loss.png plots each step once)."""
    kw = dict(TINY, data=tiny_corpus, checkpoint_dir=tmp_path, save_every=2, val_fraction=0.0, sample_every=1)
    train(max_steps=4, **kw)
    shutil.rmtree(tmp_path / "4")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1.0')  # cut short by the kill
    train(max_steps=6, **kw)
    assert [m["step"] for m in _metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
    samples = [line.split(":")[0] for line in (tmp_path / "samples.txt").read_text().splitlines()]
    assert samples == ["1", "2", "3", "4", "5", "6"]


def test_plot_shows_each_step_once(tmp_path, monkeypatch):
    rows = [{"step": s, "loss": 5.0 - s, "val_loss": None} for s in (1, 2, 3, 2, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plotted = []
    from matplotlib.axes import Axes
    original = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: plotted.append(a[0]) or original(self, *a, **k))
    run_log.plot_losses(tmp_path)
    assert list(plotted[0]) == [1, 2, 3, 4]


def test_a_run_killed_before_its_first_save_resumes_cleanly(tiny_corpus, tmp_path):
    """The folder holds config.json (and log lines) but no step: training starts over at step 0."""
    kw = dict(TINY, data=tiny_corpus, checkpoint_dir=tmp_path, save_every=0, val_fraction=0.0)
    train(max_steps=2, **kw)
    for step in _steps(tmp_path):
        shutil.rmtree(tmp_path / str(step))
    assert (tmp_path / "config.json").exists() and len(_metrics(tmp_path)) == 2
    result = train(max_steps=3, **kw)
    assert result.step == 3 and [m["step"] for m in _metrics(tmp_path)] == [1, 2, 3]


# ---- signals --------------------------------------------------------------------------------------


def test_second_ctrl_c_exits_130_without_a_traceback(tiny_corpus, tmp_path, env):
    cmd = [sys.executable, str(ROOT / "train.py"), "--data", tiny_corpus, "--checkpoint-dir", str(tmp_path),
           *TINY_FLAGS, "--max-steps", "1000000", "--save-every", "1", "--sample-every", "0", "--val-fraction", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # wait until training has really begun
            if line.startswith("step 3/"):
                break
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, out + err
    assert err.strip().splitlines()[-1] == ("SIGINT again: stopped at once; rerun to resume from the last saved "
                                            "checkpoint"), err


class _StopAfter:
    """A stop request that turns true after `n` questions."""

    def __init__(self, n):
        self.asked, self.n = 0, n

    def __call__(self):
        self.asked += 1
        return self.asked > self.n


def test_a_stop_request_ends_a_validation_pass_between_batches(tiny_corpus):
    from rnnjax.poetry.data import BucketBatcher, load_npz, unpad

    tokens, vocab = load_npz(tiny_corpus)
    state = training._State(TrainConfig(**{k: v for k, v in TINY.items() if k in ("embedding_dim", "hidden_dim",
                                                                                   "batch_size")}), len(vocab))
    batches = BucketBatcher(unpad(tokens, vocab), 8, 0, pad_id=vocab.pad_id).epoch(0)  # 5 batches
    taken = []

    def counted():
        for b in batches:
            taken.append(b)
            yield b

    assert state.val_loss(counted(), stop=_StopAfter(2)) is None
    assert len(taken) == 3  # two evaluated, the third not: the request was seen between batches
    full = state.val_loss(batches, stop=_StopAfter(99))
    assert full == pytest.approx(state.val_loss(batches)) and full > 0


def test_ctrl_c_during_validation_stops_after_the_current_batch(tiny_corpus, tmp_path, monkeypatch):
    calls = []
    evaluate = training.eval_step

    def eval_and_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the first validation batch runs
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(training, "eval_step", eval_and_interrupt)
    result = train(data=tiny_corpus, checkpoint_dir=tmp_path, max_steps=50, eval_every=1, val_fraction=0.5,
                   save_every=0, **TINY)
    assert len(calls) == 1, calls  # the other validation batches were not run
    assert (result.stopped, result.exit_code, result.step) == ("signal", 130, 1)
    assert _steps(tmp_path) == [1] and _metrics(tmp_path)[-1]["val_loss"] is None


# ---- flags, folders, messages -------------------------------------------------------------------


def test_read_only_checkpoint_dir_is_a_one_line_error(tiny_corpus, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores the mode: use a folder the kernel refuses to anyone
        folder = Path("/sys/rnnjax-read-only-test")
    try:
        with pytest.raises(SystemExit) as exc:
            train_cli.main(["--data", tiny_corpus, "--checkpoint-dir", str(folder), *TINY_FLAGS, "--max-steps", "1"])
    finally:
        (tmp_path / "ro").chmod(0o755)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"error: --checkpoint-dir {folder} is not writable"), err


def test_changing_dropout_on_resume_is_said_and_recorded(tiny_corpus, tmp_path, capsys):
    kw = dict(TINY, data=tiny_corpus, checkpoint_dir=tmp_path, save_every=0, val_fraction=0.0)
    train(max_steps=2, **kw)
    capsys.readouterr()
    train(max_steps=2, **{**kw, "dropout": 0.3, "lr": 2e-3, "quiet": False})  # (no step to train: no compile)
    assert "changed since the last run: lr 0.001 -> 0.002, dropout 0.0 -> 0.3 (from step 2)" in capsys.readouterr().out
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["dropout"] == config["flags"]["dropout"] == 0.3
    assert config["flag_changes"] == [{"step": 2, "flag": "lr", "from": 0.001, "to": 0.002},
                                      {"step": 2, "flag": "dropout", "from": 0.0, "to": 0.3}]
    assert load_model(tmp_path)[2]["dropout"] == 0.3


def test_no_progress_log_never_reports_0_tokens_per_s(tiny_corpus, tmp_path, capsys):
    train(data=tiny_corpus, checkpoint_dir=tmp_path, max_steps=2, save_every=0, val_fraction=0.0,
          **{**TINY, "quiet": False})
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(lines) == 2 and all(" 0 tokens/s" not in line for line in lines), lines


def test_data_folder_and_missing_npm_messages(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"^--data .* is a folder, not a prepared \.npz corpus"):
        train(data=str(tmp_path), checkpoint_dir=tmp_path / "c", **TINY)
    from rnnjax.poetry.data import corpus

    monkeypatch.setenv("RNNJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(corpus.shutil, "which", lambda name: None)
    with pytest.raises(UserError) as exc:
        train(data=str(tmp_path / "tang.npz"), checkpoint_dir=tmp_path / "c", **TINY)
    message = str(exc.value)
    assert "`python -m rnnjax.poetry data --source DIR" in message and "pass --source" not in message, message


def test_only_process_0_writes_shared_files(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt.jax, "process_index", lambda: 1)
    ckpt.save_config(tmp_path, {"cell": "lstm"})
    run_log.append_line(tmp_path / "metrics.jsonl", "{}")
    ckpt.write_file_checksums(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_distributed_settings_from_flags_and_environment():
    settings = distributed.distributed_settings
    assert settings(TrainConfig(), {}) == {}  # jax detects the cluster
    env = {"JAX_COORDINATOR_ADDRESS": "head:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert settings(TrainConfig(), env) == {"coordinator_address": "head:1234", "num_processes": 4, "process_id": 3}
    assert settings(TrainConfig(process_id=1), env)["process_id"] == 1  # a flag beats the environment
    with pytest.raises(UserError, match="JAX_NUM_PROCESSES='four' is not an integer"):
        settings(TrainConfig(), {"JAX_NUM_PROCESSES": "four"})
    with pytest.raises(UserError, match=r"--process-id must be in \[0, 2\), got 2"):
        settings(TrainConfig(num_processes=2, process_id=2), {})
    args = train_cli.parse_args(["--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "0"])
    assert (args.coordinator, args.num_processes, args.process_id) == ("localhost:1", 2, 0)


# ---- two processes ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(env, tiny_corpus, folder, max_steps, sample_every):
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "--data", tiny_corpus, "--checkpoint-dir", str(folder), *TINY_FLAGS,
         "--max-steps", str(max_steps), "--save-every", "0", "--sample-every", str(sample_every), "--val-fraction", "0",
         "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    try:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
    return outs


def test_two_processes_train_checkpoint_and_resume_together(tiny_corpus, tmp_path, env):
    """jax.distributed with a localhost coordinator, 1 CPU device per process, gloo collectives."""
    folder = tmp_path / "two"
    first = _two_processes(env, tiny_corpus, folder, 3, sample_every=3)
    assert "parameters on 2 cpu device(s)" in first[0]
    assert all(f"process {i}/2: finished at step 3" in out for i, out in enumerate(first)), first
    second = _two_processes(env, tiny_corpus, folder, 6, sample_every=0)  # (a sample would compile: slow)
    for i, out in enumerate(second):
        assert f"process {i}/2: resuming from step 3" in out and f"process {i}/2: finished at step 6" in out, out
        assert "Traceback" not in out
    assert "sample at step" in first[0] and "sample at step" not in first[1]  # process 1 only says where it is
    assert (folder / "3" / "params" / "ocdbt.process_1").is_dir() and _steps(folder) == [3, 6]

    train(data=tiny_corpus, checkpoint_dir=tmp_path / "one", max_steps=6, save_every=0, val_fraction=0.0, **TINY)
    two, one = _metrics(folder), _metrics(tmp_path / "one")
    assert [m["step"] for m in two] == list(range(1, 7))  # one writer: each step once
    np.testing.assert_allclose([m["loss"] for m in two], [m["loss"] for m in one], atol=1e-5, rtol=0)
    samples = [line.split(":")[0] for line in (folder / "samples.txt").read_text().splitlines()]
    assert samples == ["3"]
    assert json.loads((folder / "config.json").read_text())["flags"]["process_id"] == 0
    two, one = _params(folder, 6), _params(tmp_path / "one", 6)  # the 2-process checkpoint loads in one process
    for k in one:
        np.testing.assert_allclose(two[k], one[k], atol=1e-5, rtol=0, err_msg=k)
