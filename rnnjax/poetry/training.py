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
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from rnnjax.poetry import checkpoint as ckpt
from rnnjax.poetry.errors import UserError
from rnnjax.poetry.model import CELLS, PoetryModel

DEFAULT_DATA = "data/tang.npz"
DEFAULT_PREFIX = "床前明月光"
SAMPLE_MAX_LEN = 48  # the tutorial's generate() stops after 48 tokens
METRICS_NAME = "metrics.jsonl"
SAMPLES_NAME = "samples.txt"
PLOT_NAME = "loss.png"

# Flags whose change makes an existing checkpoint unusable (shape, data, data order).
_MUST_MATCH = ("cell", "vocab_size", "embedding_dim", "hidden_dim", "num_layers", "data_fingerprint")
_MUST_MATCH_FLAGS = ("batch_size", "seed", "val_fraction")

# Incremented when a function is traced: under jit a trace is a compile, so this counts compiles.
TRACES: collections.Counter = collections.Counter()


# ---- the jit-compiled pieces ---------------------------------------------------------------------


def make_optimizer(lr: float, clip: float) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(clip), optax.adam(lr))


def _nll_sum(graphdef, params, rest, inputs, targets, mask, key, deterministic):
    """Summed negative log-likelihood of the real (mask 1) targets."""
    model = nnx.merge(graphdef, params, rest)
    return model.nll_sum(inputs, targets, mask, deterministic=deterministic, rngs=key)


@partial(jax.jit, static_argnames=("graphdef", "dropout"), donate_argnums=(0, 1))
def train_step(params, opt_state, rest, inputs, targets, mask, base_key, step, lr, clip, *, graphdef,
               dropout):
    """One Adam step on the mean cross-entropy over real tokens. Returns (params, opt_state, loss, ok),
    `ok` False when the loss or any new parameter is not finite.

    `lr` and `clip` are traced, not static: changing them (e.g. on resume) does not recompile."""
    TRACES["train"] += 1
    key = jax.random.fold_in(base_key, step) if dropout else None
    count = jnp.maximum(jnp.sum(mask), 1.0)

    def loss_fn(p):
        return _nll_sum(graphdef, p, rest, inputs, targets, mask, key, not dropout) / count

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = make_optimizer(lr, clip).update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    ok = jnp.isfinite(loss)
    for leaf in jax.tree.leaves(params):
        ok &= jnp.all(jnp.isfinite(leaf))
    return params, opt_state, loss, ok


@partial(jax.jit, static_argnames=("graphdef",))
def eval_step(params, rest, inputs, targets, mask, *, graphdef):
    """(summed NLL, real-token count) of one batch, dropout off."""
    TRACES["eval"] += 1
    return _nll_sum(graphdef, params, rest, inputs, targets, mask, None, True), jnp.sum(mask)


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


class _StopRequest:
    """SIGINT/SIGTERM set a flag so the loop finishes its step and saves; a second one aborts."""

    def __init__(self, say):
        self.signum = None
        self._say = say
        self._old = {}

    def _handler(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
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


def _append_line(path: Path, text: str) -> None:
    if jax.process_index() == 0:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text + "\n")


def plot_losses(ckpt_dir) -> Path | None:
    """loss.png from metrics.jsonl (Agg canvas: no display, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(ckpt_dir) / METRICS_NAME
    if not path.exists() or jax.process_index() != 0:
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    train_pts = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    val_pts = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train_pts:
        ax.plot(*zip(*train_pts), label="train loss")
    if val_pts:
        ax.plot(*zip(*val_pts), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(ckpt_dir) / PLOT_NAME
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(out)
    return out


def _check_flags(f: dict) -> None:
    if f["cell"] not in CELLS:
        raise UserError(f"--cell must be one of {', '.join(CELLS)}, got {f['cell']!r}")
    for name in ("epochs", "batch_size", "embedding_dim", "hidden_dim", "num_layers"):
        if not isinstance(f[name], int) or f[name] < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {f[name]!r}")
    for name in ("lr", "clip"):
        if not (f[name] > 0 and math.isfinite(f[name])):
            raise UserError(f"--{name} must be a positive number, got {f[name]!r}")
    if not 0.0 <= f["dropout"] < 1.0:
        raise UserError(f"--dropout must be in [0, 1), got {f['dropout']}")
    if not 0.0 <= f["val_fraction"] < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {f['val_fraction']}")
    for name in ("max_steps", "time_budget"):
        if f[name] is not None and not f[name] > 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {f[name]}")
    for name in ("eval_every", "save_every", "sample_every", "log_every"):
        if f[name] < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0 (0 = off), got {f[name]}")


def _mismatches(old: dict, new: dict) -> list[str]:
    diffs = [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in _MUST_MATCH if old.get(k) != new[k]]
    diffs[:] = [d if not d.startswith("data_fingerprint") else "data file differs (fingerprint)" for d in diffs]
    if old.get("vocab") != new["vocab"] and old.get("vocab_size") == new["vocab_size"]:
        diffs.append("vocabulary differs")
    old_flags = old.get("flags") or {}
    diffs += [f"{k} {old_flags.get(k)!r} -> {new['flags'][k]!r}" for k in _MUST_MATCH_FLAGS
              if k in old_flags and old_flags[k] != new["flags"][k]]
    return diffs


def _load_data(data: str, say):
    from rnnjax.poetry.data import fingerprint, load_npz, prepare_dataset

    path = Path(data)
    if not path.exists():
        say(f"{path} not found: preparing it (downloads the chinese-poetry corpus once)")
        prepare_dataset(out=path)
    tokens, vocab = load_npz(path)
    return path, tokens, vocab, fingerprint(path)


# ---- the loop ------------------------------------------------------------------------------------


def train(*, cell: str = "lstm", epochs: int = 20, batch_size: int = 128, lr: float = 1e-3,
          clip: float = 1.0, embedding_dim: int = 128, hidden_dim: int = 256, num_layers: int = 2,
          dropout: float = 0.0, seed: int = 0, data: str = DEFAULT_DATA, checkpoint_dir=None,
          max_steps: int | None = None, time_budget: float | None = None, eval_every: int = 0,
          save_every: int = 500, sample_every: int = 1000, sample_prefix: str = DEFAULT_PREFIX,
          log_every: int = 10, val_fraction: float = 0.02, distributed: bool = False,
          progress: bool | None = None, quiet: bool = False) -> TrainResult:
    """Train (or resume) a PoetryModel; see train.py --help for every argument.

    Running the same call again resumes from the latest checkpoint in `checkpoint_dir`. Stops at
    `epochs`, at step `max_steps` (a total, so a resumed run stops at the same place), after
    `time_budget` minutes of this call, or on SIGINT/SIGTERM - always after saving.
    """
    flags = {k: v for k, v in locals().items() if k not in ("progress", "quiet")}
    say = (lambda *_: None) if quiet else (lambda msg: tqdm.write(str(msg)))
    _check_flags(flags)
    if distributed:
        try:
            jax.distributed.initialize()
        except (RuntimeError, ValueError) as e:
            raise UserError(f"--distributed: jax.distributed.initialize() failed: {e}") from None
    t_call = time.monotonic()

    from rnnjax.poetry.data import BucketBatcher, train_val_split, unpad

    data_path, tokens, vocab, data_fp = _load_data(data, say)
    train_poems, val_poems = train_val_split(unpad(tokens, vocab), val_fraction, seed)
    if not train_poems:
        raise UserError(f"{data_path} holds no training poems")
    if sample_every:
        try:
            vocab.encode(sample_prefix)
        except UserError as e:
            raise UserError(f"--sample-prefix: {e}") from None

    ckpt_dir = Path(checkpoint_dir or f"checkpoints/{cell}")
    flags["checkpoint_dir"] = str(ckpt_dir)
    config = {
        "cell": cell, "vocab_size": len(vocab), "embedding_dim": embedding_dim, "hidden_dim": hidden_dim,
        "num_layers": num_layers, "dropout": float(dropout), "vocab": list(vocab.itos),
        "data_fingerprint": data_fp, "data_path": str(data_path), "flags": flags,
    }

    # Refuse a folder holding a different model before anything in it is touched.
    has_steps = ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())
    if (ckpt_dir / ckpt.CONFIG_NAME).exists():
        diffs = _mismatches(ckpt.load_config(ckpt_dir), config)
        if diffs and has_steps:
            raise UserError(f"{ckpt_dir} holds a checkpoint of a different run ({'; '.join(diffs)}); "
                            f"use the same flags to resume, or another --checkpoint-dir")
    elif has_steps:
        raise UserError(f"{ckpt_dir} has checkpoint steps but no {ckpt.CONFIG_NAME}; "
                        f"use another --checkpoint-dir")

    devices = jax.devices()
    if batch_size % len(devices):
        raise UserError(f"--batch-size {batch_size} must be a multiple of the {len(devices)} devices")
    mesh = Mesh(np.array(devices), ("data",))
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(None, "data"))

    model = PoetryModel(len(vocab), embedding_dim, hidden_dim, num_layers, cell, dropout,
                        rngs=nnx.Rngs(seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    del model
    params = jax.device_put(params, replicated)
    rest = jax.device_put(rest, replicated)
    opt_state = jax.device_put(make_optimizer(lr, clip).init(params), replicated)
    base_key = jax.device_put(jax.random.key(seed), replicated)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))

    mngr = ckpt.open_manager(ckpt_dir)
    step, wall_offset, last_saved = 0, 0.0, None
    if has_steps:
        latest = mngr.latest_step()
        try:
            restored = mngr.restore(latest, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(ckpt.abstract(params)),
                train=ocp.args.StandardRestore({"opt_state": ckpt.abstract(opt_state)}),
                meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises assorted types for a damaged step
            raise UserError(f"cannot resume from {ckpt_dir} step {latest}: {str(e).splitlines()[0]}") from None
        params, opt_state = restored["params"], restored["train"]["opt_state"]
        step, last_saved = int(restored["meta"]["step"]), latest
        wall_offset = float(restored["meta"].get("wall_time", 0.0))
    ckpt.save_config(ckpt_dir, config)

    batcher = BucketBatcher(train_poems, batch_size, seed, pad_id=vocab.pad_id)
    val_batches = []
    if val_poems:
        buckets = batcher.bucket_lengths
        longest = max(len(p) - 1 for p in val_poems)
        if longest > buckets[-1]:
            buckets = (*buckets, longest)
        val_batches = BucketBatcher(val_poems, batch_size, seed, buckets, pad_id=vocab.pad_id).epoch(0)
    per_epoch = batcher.num_batches()
    total = per_epoch * epochs if max_steps is None else min(per_epoch * epochs, max_steps)
    static = dict(graphdef=graphdef, dropout=bool(dropout and num_layers > 1))
    hyper = (np.float32(lr), np.float32(clip))

    say(f"{cell} {num_layers}x{hidden_dim}, embedding {embedding_dim}, vocab {len(vocab)}: "
        f"{n_params:,} parameters on {len(devices)} {devices[0].platform} device(s); "
        f"{len(train_poems):,} train / {len(val_poems):,} val poems, {per_epoch} batches of {batch_size} "
        f"per epoch in buckets {batcher.bucket_lengths} ({batcher.padding_fraction():.1%} padding)")
    if step:
        say(f"resuming from step {step} (epoch {step // per_epoch + 1}, batch {step % per_epoch}) in {ckpt_dir}")
    if step >= total:
        say(f"already at step {step} of {total}: nothing to train")
        mngr.close()
        plot_losses(ckpt_dir)
        return TrainResult(step, "done", checkpoint_dir=str(ckpt_dir))

    def put(array):
        return jax.make_array_from_callback(array.shape, batch_sharding, lambda idx: array[idx])

    def evaluate() -> float | None:
        if not val_batches:
            return None
        sums = [eval_step(params, rest, put(b.inputs), put(b.targets), put(b.mask), graphdef=graphdef)
                for b in val_batches]
        nll, count = (float(sum(s[i] for s in sums)) for i in (0, 1))
        return nll / max(count, 1.0)

    def save(val_loss=None):
        nonlocal last_saved
        if last_saved == step:
            return
        meta = {"step": step, "epoch": step // per_epoch, "batch_index": step % per_epoch,
                "val_loss": val_loss, "wall_time": wall_time()}
        mngr.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            train=ocp.args.StandardSave({"opt_state": opt_state}),
            meta=ocp.args.JsonSave(meta)),
            metrics=None if val_loss is None else {"val_loss": val_loss}, force=True)
        mngr.wait_until_finished()
        last_saved = step

    def wall_time():
        return wall_offset + time.monotonic() - t_call

    def sample():
        text = greedy_sample(graphdef, params, rest, vocab, sample_prefix)
        _append_line(ckpt_dir / SAMPLES_NAME, f"{step}:{text}")
        return text

    deadline = None if time_budget is None else t_call + 60.0 * time_budget
    run_tokens, run_time = 0, 0.0                # steps that did not compile, for tokens/s
    win_loss, win_tokens, win_time, win_steps = 0.0, 0, 0.0, 0
    result = TrainResult(step, "done", checkpoint_dir=str(ckpt_dir))
    bar = tqdm(total=total, initial=step, disable=(not progress) if progress is not None else None,
               unit="step", dynamic_ncols=True, smoothing=0.1)
    traces_at_start = dict(TRACES)
    try:
        with _StopRequest(say) as stop:
            while result.stopped == "done" and step < total:
                epoch, first = divmod(step, per_epoch)
                for index, batch in enumerate(batcher.epoch(epoch)[first:], start=first):
                    traces = TRACES["train"]
                    t0 = time.perf_counter()
                    params, opt_state, loss, ok = train_step(
                        params, opt_state, rest, put(batch.inputs), put(batch.targets), put(batch.mask),
                        base_key, np.int32(step), *hyper, **static)
                    loss, ok = float(loss), bool(ok)
                    dt = time.perf_counter() - t0
                    step += 1
                    if not ok:
                        kept = f"the last good checkpoint is step {last_saved}" if last_saved is not None \
                            else "no checkpoint was saved"
                        what = "loss" if not math.isfinite(loss) else "parameters after the update"
                        raise UserError(f"non-finite {what} (loss {loss}) at step {step}: stopped without "
                                        f"saving, {kept}; try a smaller --lr or --clip")
                    real = int(batch.mask.sum())
                    if TRACES["train"] == traces:  # compile time is not throughput
                        run_tokens, run_time = run_tokens + real, run_time + dt
                        win_tokens, win_time = win_tokens + real, win_time + dt
                    win_loss, win_steps = win_loss + loss, win_steps + 1
                    rate = run_tokens / run_time if run_time else None
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}" if rate else "-", epoch=epoch + 1)

                    epoch_end = index == per_epoch - 1
                    if stop.signum is not None:
                        result.stopped, result.signum = "signal", stop.signum
                    elif deadline is not None and time.monotonic() >= deadline:
                        result.stopped = "time_budget"
                    finishing = step >= total or result.stopped != "done"
                    val_loss = None
                    if epoch_end or (eval_every and step % eval_every == 0) or \
                            (finishing and result.stopped != "signal"):
                        val_loss = evaluate()
                        if val_loss is not None:
                            result.val_loss = val_loss
                            say(f"step {step} (epoch {epoch + 1}): val loss {val_loss:.4f}, "
                                f"perplexity {math.exp(min(val_loss, 700)):.2f}")
                    if val_loss is not None or finishing or (log_every and step % log_every == 0):
                        window_rate = win_tokens / win_time if win_time else None
                        _append_line(ckpt_dir / METRICS_NAME, json.dumps({
                            "step": step, "epoch": epoch + (index + 1) / per_epoch,
                            "loss": win_loss / win_steps if win_steps else None, "val_loss": val_loss,
                            "val_ppl": math.exp(min(val_loss, 700)) if val_loss is not None else None,
                            "tokens_per_s": window_rate, "wall_time": round(wall_time(), 3)}))
                        if bar.disable and not quiet and log_every and step % log_every == 0:
                            say(f"step {step}/{total}: loss {win_loss / max(win_steps, 1):.4f}, "
                                f"{window_rate or 0:,.0f} tokens/s")
                        win_loss, win_tokens, win_time, win_steps = 0.0, 0, 0.0, 0
                    if sample_every and (step % sample_every == 0 or (finishing and result.stopped == "done")):
                        say(f"sample at step {step}: {sample()}")
                    if val_loss is not None or finishing or (save_every and step % save_every == 0):
                        save(val_loss)
                    if finishing:
                        break
                if step >= total:
                    break
    finally:
        bar.close()
        mngr.close()

    result.step = step
    result.tokens_per_s = run_tokens / run_time if run_time else None
    result.compiles = {k: TRACES[k] - traces_at_start.get(k, 0) for k in ("train", "eval", "decode")}
    plot_losses(ckpt_dir)
    how = {"done": "finished", "time_budget": "time budget reached",
           "signal": f"stopped by {signal.Signals(result.signum).name}" if result.signum else ""}[result.stopped]
    say(f"{how} at step {step}; checkpoint in {ckpt_dir}"
        + (f"; {result.tokens_per_s:,.0f} real tokens/s" if result.tokens_per_s else "")
        + f"; compiles: train {result.compiles['train']} (bucket lengths {len(batcher.bucket_lengths)}), "
          f"eval {result.compiles['eval']}, sample {result.compiles['decode']}"
        + ("; rerun the same command to resume" if result.stopped != "done" else ""))
    return result
