"""The training loop: bucketed batches -> one jit-compiled step -> metrics, samples, checkpoints.

Speed comes from three choices: the model is split into (graphdef, params, rest) once and the step
is a plain `jax.jit` over arrays (no NNX graph traversal per step); parameters and optimizer state
are donated so XLA updates them in place; batches come in a few length buckets, so there is one
compile per bucket length and no compute on padding beyond a bucket's slack.

Exact resume: the data order is a function of (seed, epoch), the dropout key of (seed, step), so a
checkpoint needs only params, optimizer state and the step to continue bit for bit.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import signal
import threading
import time
import uuid
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from rnnjax.poetry import checkpoint as ckpt
from rnnjax.poetry import distributed, run_log
from rnnjax.poetry.config import TrainConfig
from rnnjax.poetry.errors import UserError
from rnnjax.poetry.hardware import auto_precision
from rnnjax.poetry.model import PoetryModel

SAMPLE_MAX_LEN = 48  # the tutorial's generate() stops after 48 tokens

# Flags whose change makes an existing checkpoint unusable (shape, data, data order).
_MUST_MATCH = ("cell", "vocab_size", "embedding_dim", "hidden_dim", "num_layers", "data_fingerprint")
_MUST_MATCH_FLAGS = ("batch_size", "seed", "val_fraction")
# Flags that may change on resume (training goes on from the checkpoint with the new value); each
# change is said on stderr and kept in config.json's `flag_changes` (step, flag, from, to).
_MAY_CHANGE = ("lr", "schedule", "warmup_steps", "decay_steps", "lr_floor", "clip", "dropout", "precision")

# Incremented when a function is traced: under jit a trace is a compile, so this counts compiles.
TRACES: collections.Counter = collections.Counter()


# ---- the jit-compiled pieces ---------------------------------------------------------------------


def make_optimizer(lr: float, clip: float) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(clip), optax.adam(lr))


def lr_schedule(cfg: TrainConfig, last_step: int) -> optax.Schedule:
    """Step -> learning rate: a linear warmup from 0 to `cfg.lr` over `warmup_steps`, then `cfg.lr`
    held (`constant`) or decayed by a half cosine or a straight line to `lr_floor * lr` at
    `decay_steps` (default `last_step`, the run's planned end) and held there.

    The rate is a function of the step alone, so a resumed run continues on the same curve, and it
    is computed outside the compiled step and passed in as a traced value: Adam's state does not
    depend on it, checkpoints written before schedules existed resume, and a changed schedule on
    resume neither recompiles nor needs a new optimizer state.
    """
    peak, warmup = cfg.lr, cfg.warmup_steps
    decay = max((cfg.decay_steps or last_step) - warmup, 1)
    main = {"constant": lambda: optax.constant_schedule(peak),
            "cosine": lambda: optax.cosine_decay_schedule(peak, decay, alpha=cfg.lr_floor),
            "linear": lambda: optax.linear_schedule(peak, peak * cfg.lr_floor, decay)}[cfg.schedule]()
    if not warmup:
        return main
    # Starts at lr/warmup, not 0: step 0 would otherwise be a wasted step.
    return optax.join_schedules([optax.linear_schedule(peak / warmup, peak, warmup - 1), main], [warmup])


def compute_dtype(precision: str):
    """`TrainConfig.precision` -> the dtype the model computes in (None: its parameters', float32)."""
    return {"float32": None, "bfloat16": jnp.bfloat16}[precision]


def _nll_sum(graphdef, params, rest, inputs, targets, mask, key, deterministic, precision="float32"):
    """Summed negative log-likelihood of the real (mask 1) targets."""
    model = nnx.merge(graphdef, params, rest)
    return model.nll_sum(inputs, targets, mask, deterministic=deterministic, rngs=key,
                         dtype=compute_dtype(precision))


@partial(jax.jit, static_argnames=("graphdef", "dropout", "precision"), donate_argnums=(0, 1))
def train_step(params, opt_state, rest, inputs, targets, mask, base_key, step, lr, clip, *, graphdef,
               dropout, precision="float32"):
    """One Adam step on the mean cross-entropy over real tokens. Returns (params, opt_state, loss, ok),
    `ok` False when the loss or any new parameter is not finite.

    `lr` and `clip` are traced, not static: changing them (e.g. on resume) does not recompile.
    `precision` "bfloat16" is mixed precision: the embeddings are cast to bfloat16, so every matmul
    of the layers and the output layer takes bfloat16 operands (weights cast inside), accumulating in
    float32; the parameters, their gradients, Adam's state, the loss and its log-sum-exp stay float32
    (see `rnnjax.recurrent.apply` and `rnnjax.losses`)."""
    TRACES["train"] += 1
    key = jax.random.fold_in(base_key, step) if dropout else None
    count = jnp.maximum(jnp.sum(mask), 1.0)

    def loss_fn(p):
        return _nll_sum(graphdef, p, rest, inputs, targets, mask, key, not dropout, precision) / count

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = make_optimizer(lr, clip).update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    ok = jnp.isfinite(loss)
    for leaf in jax.tree.leaves(params):
        ok &= jnp.all(jnp.isfinite(leaf))
    return params, opt_state, loss, ok


@partial(jax.jit, static_argnames=("graphdef", "precision"))
def eval_step(params, rest, inputs, targets, mask, *, graphdef, precision="float32"):
    """(summed NLL, real-token count) of one batch, dropout off. Training validates in float32
    whatever its precision: the figure is the model's, not the arithmetic's."""
    TRACES["eval"] += 1
    return _nll_sum(graphdef, params, rest, inputs, targets, mask, None, True, precision), jnp.sum(mask)


@partial(jax.jit, static_argnames=("graphdef",))
def _decode_step(params, rest, token, hx, *, graphdef):
    TRACES["decode"] += 1
    model = nnx.merge(graphdef, params, rest)
    logits, hx = model(token, hx, deterministic=True)
    return logits[-1, 0], hx


def greedy_sample(graphdef, params, rest, vocab, prefix: str, max_len: int = SAMPLE_MAX_LEN) -> str:
    """The tutorial's `generate`: feed <START> and the prefix, then the most likely next character
    until <EOP> or `max_len` tokens. The full generator (sampling, acrostics) is rnnjax.poetry.generation."""
    forced = [int(i) for i in vocab.encode(prefix)]
    token, hx, out = vocab.start_id, None, list(forced)
    for i in range(max_len):
        logits, hx = _decode_step(params, rest, jnp.full((1, 1), token, jnp.int32), hx, graphdef=graphdef)
        if i < len(forced):
            token = forced[i]
        else:
            token = int(jnp.argmax(logits))
            if token == vocab.eop_id:
                break
            out.append(token)
    return vocab.decode(out)


# ---- bookkeeping ---------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    step: int
    stopped: str                 # "done", "time_budget" or "signal"
    signum: int | None = None
    val_loss: float | None = None
    tokens_per_s: float | None = None
    compiles: dict = dataclasses.field(default_factory=dict)
    checkpoint_dir: str = ""

    @property
    def exit_code(self) -> int:
        """0, or 128 + signal number when stopped by Ctrl-C (130) / SIGTERM (143), as shells report."""
        return 128 + self.signum if self.signum else 0


class Aborted(KeyboardInterrupt):
    """A second SIGINT/SIGTERM: stop at once, without saving (`signum` is the second signal)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _StopRequest:
    """SIGINT/SIGTERM set a flag so the loop finishes its step and saves; a second one aborts."""

    def __init__(self, say):
        self.signum = None
        self._say = say
        self._old = {}

    def __call__(self) -> bool:
        """Whether a stop was requested (the loop and the validation pass ask between batches)."""
        return self.signum is not None

    def _handler(self, signum, frame):
        if self.signum is not None:
            raise Aborted(signum)
        self.signum = signum
        self._say(f"{signal.Signals(signum).name}: finishing this step and saving (again to abort)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _flag_changes(old: dict, new: dict, step: int) -> list[dict]:
    """The `_MAY_CHANGE` flags whose value differs from the run that saved the checkpoint."""
    old_flags = old.get("flags") or {}
    return [{"step": step, "flag": k, "from": old_flags[k], "to": new["flags"][k]} for k in _MAY_CHANGE
            if k in old_flags and old_flags[k] != new["flags"][k]]


def _mismatches(old: dict, new: dict) -> list[str]:
    diffs = [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in _MUST_MATCH if old.get(k) != new[k]]
    diffs[:] = [d if not d.startswith("data_fingerprint") else "data file differs (fingerprint)" for d in diffs]
    if old.get("vocab") != new["vocab"] and old.get("vocab_size") == new["vocab_size"]:
        diffs.append("vocabulary differs")
    old_flags = old.get("flags") or {}
    diffs += [f"{k} {old_flags.get(k)!r} -> {new['flags'][k]!r}" for k in _MUST_MATCH_FLAGS
              if k in old_flags and old_flags[k] != new["flags"][k]]
    return diffs


# ---- set-up --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Data:
    """The corpus of a run: where it came from, and its training and validation poems."""

    path: Path
    vocab: object
    fingerprint: str
    train: list
    val: list


def _load_data(cfg: TrainConfig, say) -> _Data:
    from rnnjax.poetry.data import fingerprint, load_npz, prepare_dataset, train_val_split, unpad

    path = Path(cfg.data)
    if path.is_dir():
        raise UserError(f"--data {path} is a folder, not a prepared .npz corpus "
                        f"(`python -m rnnjax.poetry data --out FILE` prepares one)")
    if not path.exists():
        say(f"{path} not found: preparing it (downloads the chinese-poetry corpus once)")
        try:
            prepare_dataset(out=path)
        except UserError as e:  # its advice names the data command's flags: say how to run that command
            raise UserError(str(e).replace("pass --source DIR", f"run `python -m rnnjax.poetry data --source DIR "
                                           f"--out {path}`")) from None
    tokens, vocab = load_npz(path)
    train_poems, val_poems = train_val_split(unpad(tokens, vocab), cfg.val_fraction, cfg.seed)
    if not train_poems:
        raise UserError(f"{path} holds no training poems")
    if cfg.sample_every:
        try:
            vocab.encode(cfg.sample_prefix)
        except UserError as e:
            raise UserError(f"--sample-prefix: {e}") from None
    return _Data(path, vocab, fingerprint(path), train_poems, val_poems)


def _claim_folder(ckpt_dir: Path, record: dict) -> bool:
    """Refuse a folder holding another run before anything in it is touched; True if there are steps to resume."""
    has_steps = ckpt.has_steps(ckpt_dir)
    if (ckpt_dir / ckpt.CONFIG_NAME).exists():
        diffs = _mismatches(ckpt.load_config(ckpt_dir), record)
        if diffs and has_steps:
            raise UserError(f"{ckpt_dir} holds a checkpoint of a different run ({'; '.join(diffs)}); "
                            f"use the same flags to resume, or another --checkpoint-dir")
    elif has_steps:
        raise UserError(f"{ckpt_dir} has checkpoint steps but no {ckpt.CONFIG_NAME}; "
                        f"use another --checkpoint-dir")
    return has_steps


def _check_writable(ckpt_dir: Path) -> None:
    """One line (not an OSError traceback) when the checkpoint folder cannot be created or written."""
    probe = ckpt_dir / f".write-test-{uuid.uuid4().hex[:12]}"
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--checkpoint-dir {ckpt_dir} is not writable: {e.strerror or e}") from None


def _val_batches(data: _Data, batcher, cfg: TrainConfig) -> list:
    """The validation poems in the training buckets (plus one for a longer validation poem)."""
    from rnnjax.poetry.data import BucketBatcher

    if not data.val:
        return []
    buckets = batcher.bucket_lengths
    longest = max(len(p) - 1 for p in data.val)
    if longest > buckets[-1]:
        buckets = (*buckets, longest)
    return BucketBatcher(data.val, cfg.batch_size, cfg.seed, buckets, pad_id=data.vocab.pad_id).epoch(0)


class _State:
    """Parameters, optimizer state and dropout key, replicated over a 1-D mesh of every device; each
    batch is split over the mesh along its batch axis."""

    def __init__(self, cfg: TrainConfig, vocab_size: int):
        self.devices = jax.devices()
        if cfg.batch_size % len(self.devices):
            raise UserError(f"--batch-size {cfg.batch_size} must be a multiple of the {len(self.devices)} devices")
        mesh = Mesh(np.array(self.devices), ("data",))
        replicated = NamedSharding(mesh, P())
        self._batch_sharding = NamedSharding(mesh, P(None, "data"))
        model = PoetryModel.from_config(cfg.model_config(vocab_size), rngs=nnx.Rngs(cfg.seed))
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        del model
        self.params = jax.device_put(params, replicated)
        self.rest = jax.device_put(rest, replicated)
        self.opt_state = jax.device_put(make_optimizer(cfg.lr, cfg.clip).init(self.params), replicated)
        # Made by a jit with replicated output: device_put cannot place a key on other processes' devices.
        self.base_key = jax.jit(partial(jax.random.key, cfg.seed), out_shardings=replicated)()
        self.n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.params))
        self._static = dict(graphdef=self.graphdef, dropout=bool(cfg.dropout and cfg.num_layers > 1),
                            precision=cfg.precision)
        self._clip = np.float32(cfg.clip)

    def _put(self, array):
        return jax.make_array_from_callback(array.shape, self._batch_sharding, lambda idx: array[idx])

    def train_on(self, batch, step: int, lr: float) -> tuple[float, bool]:
        """Step number `step` (from 0) at learning rate `lr`: (loss, whether the loss and the new
        parameters are finite)."""
        self.params, self.opt_state, loss, ok = train_step(
            self.params, self.opt_state, self.rest, self._put(batch.inputs), self._put(batch.targets),
            self._put(batch.mask), self.base_key, np.int32(step), np.float32(lr), self._clip,
            **self._static)
        return _scalar(loss), bool(_local_copy(ok))

    def val_loss(self, batches, stop=None) -> float | None:
        """Mean negative log-likelihood per real token over `batches`; None without batches, or when
        `stop()` turns true: it is asked between batches, each waited for, so Ctrl-C ends a long
        validation pass within a batch."""
        sums = []
        for b in batches:
            if stop is not None and stop():
                return None
            sums.append(jax.block_until_ready(eval_step(
                self.params, self.rest, self._put(b.inputs), self._put(b.targets), self._put(b.mask),
                graphdef=self.graphdef)))
        if not sums:
            return None
        nll, count = (_scalar(sum(s[i] for s in sums)) for i in (0, 1))
        return nll / max(count, 1.0)

    def sample(self, vocab, prefix: str) -> str:
        """Greedy sample with this process's copy of the parameters (no cross-process computation)."""
        local = lambda tree: jax.tree.map(_local_copy, tree)  # noqa: E731
        return greedy_sample(self.graphdef, local(self.params), local(self.rest), vocab, prefix)


def _local_copy(x):
    """A replicated array's copy on this process's first device (the whole array)."""
    return x.addressable_data(0) if isinstance(x, jax.Array) else x


def _scalar(x) -> float:
    """float() of a replicated scalar, also when it spans other processes' devices."""
    return float(_local_copy(x))


@dataclasses.dataclass
class _Meter:
    """Loss and real-token throughput, over this call (`run_*`) and since the last metrics line (`win_*`).
    A step that compiled counts for the loss, not for throughput: compile time is not throughput."""

    run_tokens: int = 0
    run_time: float = 0.0
    win_loss: float = 0.0
    win_steps: int = 0
    win_tokens: int = 0
    win_time: float = 0.0

    def add(self, loss: float, tokens: int, seconds: float, compiled: bool) -> None:
        if not compiled:
            self.run_tokens, self.run_time = self.run_tokens + tokens, self.run_time + seconds
            self.win_tokens, self.win_time = self.win_tokens + tokens, self.win_time + seconds
        self.win_loss, self.win_steps = self.win_loss + loss, self.win_steps + 1

    def rate(self) -> float | None:
        return self.run_tokens / self.run_time if self.run_time else None

    def take_window(self) -> tuple[float | None, float | None]:
        """(mean loss, real tokens/s) since the last call, which starts a new window."""
        loss = self.win_loss / self.win_steps if self.win_steps else None
        rate = self.win_tokens / self.win_time if self.win_time else None
        self.win_loss, self.win_tokens, self.win_time, self.win_steps = 0.0, 0, 0.0, 0
        return loss, rate


# ---- the loop ------------------------------------------------------------------------------------


def _silent(*_) -> None:
    pass


def _not_process_0(*_) -> None:
    pass


class _Run:
    """One train() call's position and schedule: what happens after each step, and the files it writes."""

    def __init__(self, cfg: TrainConfig, data: _Data, state: _State, manager, say, t_call: float):
        from rnnjax.poetry.data import BucketBatcher

        self.cfg, self.data, self.state, self.mngr, self.say, self.t_call = cfg, data, state, manager, say, t_call
        # Where training starts and ends is said by every process (so each one's log shows it), others by process 0.
        self.say_all = say if jax.process_count() == 1 or say is _silent else \
            (lambda msg: tqdm.write(f"process {jax.process_index()}/{jax.process_count()}: {msg}"))
        self.ckpt_dir = Path(cfg.checkpoint_dir)
        self.step, self.last_saved, self.wall_offset = 0, None, 0.0
        self.batcher = BucketBatcher(data.train, cfg.batch_size, cfg.seed, pad_id=data.vocab.pad_id)
        self.val_batches = _val_batches(data, self.batcher, cfg)
        self.per_epoch = self.batcher.num_batches()
        self.total = self.per_epoch * cfg.epochs if cfg.max_steps is None else \
            min(self.per_epoch * cfg.epochs, cfg.max_steps)
        schedule = jax.jit(lr_schedule(cfg, self.total))
        self.lr_at = lambda step: float(schedule(step))  # the run's length fixes the decay's end
        self.deadline = None if cfg.time_budget is None else t_call + 60.0 * cfg.time_budget
        self.meter = _Meter()
        self.result = TrainResult(0, "done", checkpoint_dir=str(self.ckpt_dir))
        self.bar = None

    def restore(self) -> None:
        """Continue from the latest good step. A damaged step (its files or arrays differ from what was
        saved) is moved aside as `damaged-step-N`, with a one-line warning, and the one before is tried."""
        s = self.state
        for step in sorted(self.mngr.all_steps(), reverse=True):
            try:
                s.params, s.opt_state, meta = ckpt.restore_step(self.mngr, step, s.params, s.opt_state)
            except ckpt.DamagedCheckpoint as e:
                moved = ckpt.set_aside(self.mngr, step)
                self.say(f"warning: skipping step {step}: {e}; moved it to {moved.name}")
                continue
            self.step, self.last_saved = int(meta["step"]), step
            self.wall_offset = float(meta.get("wall_time", 0.0))
            return
        raise UserError(f"no readable step left in {self.ckpt_dir} (the damaged ones were moved to "
                        f"{ckpt.DAMAGED_PREFIX}*); rerun to start from step 0, or use another --checkpoint-dir")

    def drop_later_logs(self) -> None:
        """metrics.jsonl and samples.txt as they were at the step training continues from."""
        run_log.drop_lines_after(self.ckpt_dir / run_log.METRICS_NAME, self.step, run_log.metrics_step)
        run_log.drop_lines_after(self.ckpt_dir / run_log.SAMPLES_NAME, self.step, run_log.sample_step)

    def announce(self, auto: bool = False) -> None:
        cfg, data, devices, b = self.cfg, self.data, self.state.devices, self.batcher
        how = {"float32": "float32", "bfloat16": "bfloat16 mixed precision"}[cfg.precision]
        if auto:
            how += (" (--precision auto: the hardware multiplies bfloat16)" if cfg.precision == "bfloat16" else
                    " (--precision auto: no native bfloat16 here)")
        self.say(f"{cfg.cell} {cfg.num_layers}x{cfg.hidden_dim}, embedding {cfg.embedding_dim}, vocab "
                 f"{len(data.vocab)}: {self.state.n_params:,} parameters on {len(devices)} {devices[0].platform} "
                 f"device(s), {how}; {len(data.train):,} train / {len(data.val):,} val poems, {self.per_epoch} batches "
                 f"of {cfg.batch_size} per epoch in buckets {b.bucket_lengths} ({b.padding_fraction():.1%} padding)")
        if self.step:
            self.say_all(f"resuming from step {self.step} (epoch {self.step // self.per_epoch + 1}, batch "
                         f"{self.step % self.per_epoch}) in {self.ckpt_dir}")

    def open_bar(self, progress: bool | None) -> None:
        self.bar = tqdm(total=self.total, initial=self.step, unit="step", dynamic_ncols=True, smoothing=0.1,
                        disable=(not progress) if progress is not None else None)

    def batches(self):
        """(epoch, index in the epoch, batch) from the current step to the last, across epochs."""
        start = self.step
        for step in range(start, self.total):
            epoch, index = divmod(step, self.per_epoch)
            if step == start or index == 0:
                epoch_batches = self.batcher.epoch(epoch)
            yield epoch, index, epoch_batches[index]

    def train_on(self, epoch: int, batch) -> None:
        """One step; UserError, before anything is saved, when the loss or the parameters stop being finite."""
        traces, t0 = TRACES["train"], time.perf_counter()
        loss, ok = self.state.train_on(batch, self.step, self.lr_at(self.step))
        seconds = time.perf_counter() - t0
        self.step += 1
        if not ok:
            kept = f"the last good checkpoint is step {self.last_saved}" if self.last_saved is not None \
                else "no checkpoint was saved"
            what = "loss" if not math.isfinite(loss) else "parameters after the update"
            raise UserError(f"non-finite {what} (loss {loss}) at step {self.step}: stopped without "
                            f"saving, {kept}; try a smaller --lr or --clip")
        self.meter.add(loss, int(batch.mask.sum()), seconds, compiled=TRACES["train"] != traces)
        rate = self.meter.rate()
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}" if rate else "-", epoch=epoch + 1)

    def check_stop(self, stop: _StopRequest) -> None:
        if stop.signum is not None:
            self.result.stopped, self.result.signum = "signal", stop.signum
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            self.result.stopped = "time_budget"

    def after_step(self, epoch: int, index: int, stop: _StopRequest) -> bool:
        """The schedule: validate, log, sample, save. True when this was the last step of the call.
        A stop requested during validation abandons it (no validation loss) and saves."""
        cfg = self.cfg
        finishing = self.step >= self.total or self.result.stopped != "done"
        due = lambda every: bool(every) and self.step % every == 0  # noqa: E731
        val_loss = None
        if index == self.per_epoch - 1 or due(cfg.eval_every) or (finishing and self.result.stopped != "signal"):
            val_loss = self.evaluate(epoch, stop)
            self.check_stop(stop)
            finishing = finishing or self.result.stopped != "done"
        stopped = self.result.stopped
        if val_loss is not None or finishing or due(cfg.log_every):
            self.log(epoch, index, val_loss)
        if cfg.sample_every and (due(cfg.sample_every) or (finishing and stopped == "done")):
            self.say(f"sample at step {self.step}: {self.sample()}")
        if val_loss is not None or finishing or due(cfg.save_every):
            self.save(val_loss)
        return finishing

    def evaluate(self, epoch: int, stop=None) -> float | None:
        val_loss = self.state.val_loss(self.val_batches, stop)
        if val_loss is not None:
            self.result.val_loss = val_loss
            self.say(f"step {self.step} (epoch {epoch + 1}): val loss {val_loss:.4f}, "
                     f"perplexity {math.exp(min(val_loss, 700)):.2f}")
        return val_loss

    def log(self, epoch: int, index: int, val_loss: float | None) -> None:
        loss, rate = self.meter.take_window()
        run_log.append_line(self.ckpt_dir / run_log.METRICS_NAME, json.dumps({
            "step": self.step, "epoch": epoch + (index + 1) / self.per_epoch, "loss": loss, "val_loss": val_loss,
            "val_ppl": math.exp(min(val_loss, 700)) if val_loss is not None else None,
            "tokens_per_s": rate, "lr": self.lr_at(self.step - 1), "wall_time": round(self.wall_time(), 3)}))
        if self.bar.disable and self.cfg.log_every and self.step % self.cfg.log_every == 0:
            # "-": every step since the last line compiled, and compile time is not throughput.
            self.say(f"step {self.step}/{self.total}: loss {loss:.4f}, "
                     f"{f'{rate:,.0f}' if rate else '-'} tokens/s")

    def sample(self) -> str:
        text = self.state.sample(self.data.vocab, self.cfg.sample_prefix)
        run_log.append_line(self.ckpt_dir / run_log.SAMPLES_NAME, f"{self.step}:{text}")
        return text

    def save(self, val_loss: float | None) -> None:
        if self.last_saved == self.step:
            return
        meta = {"step": self.step, "epoch": self.step // self.per_epoch, "batch_index": self.step % self.per_epoch,
                "val_loss": val_loss, "wall_time": self.wall_time()}
        ckpt.save_step(self.mngr, self.step, self.state.params, self.state.opt_state, meta,
                       None if val_loss is None else {"val_loss": val_loss})
        self.last_saved = self.step

    def wall_time(self) -> float:
        """Seconds of training in this folder, earlier runs included."""
        return self.wall_offset + time.monotonic() - self.t_call

    def finish(self, traces_at_start: dict) -> TrainResult:
        result = self.result
        result.step = self.step
        result.tokens_per_s = self.meter.rate()
        result.compiles = {k: TRACES[k] - traces_at_start.get(k, 0) for k in ("train", "eval", "decode")}
        run_log.plot_losses(self.ckpt_dir)
        how = {"done": "finished", "time_budget": "time budget reached",
               "signal": f"stopped by {signal.Signals(result.signum).name}" if result.signum else ""}[result.stopped]
        self.say_all(f"{how} at step {self.step}; checkpoint in {self.ckpt_dir}"
                 + (f"; {result.tokens_per_s:,.0f} real tokens/s" if result.tokens_per_s else "")
                 + f"; compiles: train {result.compiles['train']} (bucket lengths {len(self.batcher.bucket_lengths)}), "
                   f"eval {result.compiles['eval']}, sample {result.compiles['decode']}"
                 + ("; rerun the same command to resume" if result.stopped != "done" else ""))
        return result


def train(config: TrainConfig | None = None, /, *, progress: bool | None = None, quiet: bool = False,
          **flags) -> TrainResult:
    """Train (or resume) a PoetryModel: ``train(TrainConfig(cell="gru"))``, or ``train(cell="gru")``.

    `flags` replace fields of `config` (TrainConfig's defaults when None); TrainConfig documents each.
    Running the same call again resumes from the latest checkpoint in `checkpoint_dir`. Stops at
    `epochs`, at step `max_steps` (a total, so a resumed run stops at the same place), after
    `time_budget` minutes of this call, or on SIGINT/SIGTERM - always after saving. `progress`: a
    tqdm bar (None: only on a terminal); `quiet`: no messages.
    """
    cfg = dataclasses.replace(config or TrainConfig(), **flags)  # TrainConfig checks every flag
    if cfg.distributed or any(getattr(cfg, k) is not None for k in distributed.ENV):
        distributed.initialize(cfg)
    # With several processes only process 0 speaks (and writes the shared files).
    say = _silent if quiet else (lambda msg: tqdm.write(str(msg))) if jax.process_index() == 0 else _not_process_0
    auto = cfg.precision == "auto"
    if auto:  # resolved before anything is recorded: config.json keeps the precision that ran
        cfg = dataclasses.replace(cfg, precision=auto_precision(jax.devices()))
    t_call = time.monotonic()
    data = _load_data(cfg, say)
    ckpt_dir = Path(cfg.checkpoint_dir or f"checkpoints/{cfg.cell}")
    cfg = dataclasses.replace(cfg, checkpoint_dir=str(ckpt_dir))
    record = ckpt.config_record(cfg.model_config(len(data.vocab)), data.vocab, data.fingerprint, data.path,
                                dataclasses.asdict(cfg))
    resume = _claim_folder(ckpt_dir, record)
    _check_writable(ckpt_dir)
    run = _Run(cfg, data, _State(cfg, len(data.vocab)), ckpt.open_manager(ckpt_dir), say, t_call)
    if resume:
        run.restore()
    run.drop_later_logs()
    if resume:
        old = ckpt.load_config(ckpt_dir)
        changes = _flag_changes(old, record, run.step)
        record["flag_changes"] = list(old.get("flag_changes") or []) + changes
        if changes:
            say("changed since the last run: " + ", ".join(f"{c['flag']} {c['from']!r} -> {c['to']!r}"
                                                            for c in changes) + f" (from step {run.step})")
    ckpt.save_config(ckpt_dir, record)
    run.announce(auto)
    if run.step >= run.total:
        say(f"already at step {run.step} of {run.total}: nothing to train")
        run.mngr.close()
        run_log.plot_losses(ckpt_dir)
        return TrainResult(run.step, "done", checkpoint_dir=str(ckpt_dir))

    run.open_bar(progress)
    traces_at_start = dict(TRACES)
    try:
        with _StopRequest(say) as stop:
            for epoch, index, batch in run.batches():
                run.train_on(epoch, batch)
                run.check_stop(stop)
                if run.after_step(epoch, index, stop):
                    break
    except Aborted:  # a second signal: no waiting, not even for a save it interrupted (the next run
        run.bar.close()  # removes orbax's unfinished step, as after a kill)
        raise
    except BaseException:
        run.bar.close()
        run.mngr.close()
        raise
    run.bar.close()
    run.mngr.close()
    return run.finish(traces_at_start)
