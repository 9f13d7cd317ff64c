"""Checkpoints: orbax steps plus a `config.json` that lets a model be rebuilt without the dataset.

A checkpoint directory holds orbax step folders (`<step>/params`, `<step>/train`, `<step>/meta`) and,
beside them, `config.json` (model shape, cell, vocabulary as a token list, data fingerprint, flags).
Parameters are their own orbax item so that `load_model` restores them without knowing the
optimizer; an exported model is the same layout with only `params` (and possibly float16 storage),
so one loader serves both.

Integrity: every step saved here records the sha256 of each array's bytes in its `meta` item (saved
with the step, atomically), and then `checksums.json` in the step folder: size and sha256 of every
file orbax wrote. Loading checks the files before orbax reads them (so damage is named as a file,
with no orbax noise) and the arrays after; any difference is a `DamagedCheckpoint`. A step without
these records (saved before they existed, such as the shipped model) loads unverified.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers

from rnnjax.poetry.config import ModelConfig
from rnnjax.poetry.errors import UserError
from rnnjax.poetry.files import atomic_write
from rnnjax.poetry.model import PoetryModel

CONFIG_NAME = "config.json"
CHECKSUMS_NAME = "checksums.json"  # in a step folder, written after the step: its files' sizes and sha256
DAMAGED_PREFIX = "damaged-step-"   # where training moves a damaged step aside (orbax ignores the name)
# config.json: the ModelConfig fields, flat, beside these (old files have the same layout).
RECORD_KEYS = ("vocab", "data_fingerprint", "flags")
# A step folder's orbax items: only this module knows them.
_PARAMS, _TRAIN, _META = "params", "train", "meta"
KEEP_LATEST = 3
_DTYPES = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}


class _QuietExpectedWarnings(logging.Filter):
    """orbax warns about things we do on purpose: periodic saves without a validation loss, opening a
    folder read-only to load a model, and saving again a step that a killed run left unfinished."""

    EXPECTED = ("did not provide metrics", "read only", "read_only=True", "Metadata file does not exist",
                "since it is not finalized")  # a step left half-written by a kill, removed before saving again

    def filter(self, record):
        message = record.getMessage()
        return not any(e in message for e in self.EXPECTED)


logging.getLogger("absl").addFilter(_QuietExpectedWarnings())


# When orbax fails to read one array of a damaged checkpoint it returns at once, while its other
# reads are still running on TensorStore's threads: they finish later into a closed event loop and
# print tracebacks ("Event loop is closed", "Task exception was never retrieved", "Exception ignored
# in <coroutine ...>"), possibly after our one-line error. The error has been reported; these
# leftovers are dropped, and nothing else is. Which of orbax's coroutines is left over varies from
# run to run (CI once met async_deserialize where _read_array_index_and_device_put was expected), so
# they are known by orbax's package path or TensorStore's name in the message or its traceback.
def _is_orbax_leftover(text: str) -> bool:
    return any(mark in text for mark in ("Event loop is closed", "orbax/checkpoint/", "TensorStore"))


def _with_traceback(text: str, exc_info) -> str:
    return text + "".join(traceback.format_exception(*exc_info)) if exc_info and exc_info[0] else text


class _DropOrbaxLeftovers(logging.Filter):
    def filter(self, record):
        return not _is_orbax_leftover(_with_traceback(record.getMessage(), record.exc_info))


def _install_leftover_filters() -> None:
    logging.getLogger("asyncio").addFilter(_DropOrbaxLeftovers())
    previous_hook, previous_unraisable = sys.excepthook, sys.unraisablehook

    def excepthook(kind, value, tb):
        if not (kind is RuntimeError and "Event loop is closed" in str(value)):
            previous_hook(kind, value, tb)

    def unraisablehook(u):
        where = _with_traceback(repr(u.object) + str(u.exc_value), (u.exc_type, u.exc_value, u.exc_traceback))
        if not _is_orbax_leftover(where):
            previous_unraisable(u)

    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


_FILTERS_INSTALLED = False


@contextlib.contextmanager
def _quiet_orbax():
    """Around an orbax read that may fail: the absl and asyncio loggers only pass critical messages,
    and orbax's leftovers are filtered from then on (they can come while the read fails or later)."""
    global _FILTERS_INSTALLED
    if not _FILTERS_INSTALLED:
        _install_leftover_filters()
        _FILTERS_INSTALLED = True
    loggers = [logging.getLogger(n) for n in ("absl", "asyncio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _orbax_error(e: BaseException) -> str:
    """The informative first line of an orbax/TensorStore failure (its cause names the array and file)."""
    for err in (e.__cause__, e.__context__, e):
        text = str(err or "").strip()
        if text:
            line = text.splitlines()[0]
            return line.split(" See full TensorStore details")[0]
    return type(e).__name__


# ---- integrity -----------------------------------------------------------------------------------


class DamagedCheckpoint(UserError):
    """A saved step whose files or arrays are not what was written (truncated, emptied, deleted, changed)."""


def _host_bytes(x) -> bytes:
    """An array's bytes as stored: this process's copy when it is replicated across processes."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.ascontiguousarray(np.asarray(x)).tobytes()


def array_checksums(tree, prefix: str) -> dict[str, str]:
    """{'<prefix>.<array name>': sha256 of its bytes} for every array of `tree`."""
    return {f"{prefix}.{_key(path)}": hashlib.sha256(_host_bytes(x)).hexdigest()
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_file_checksums(step_dir, items=(_PARAMS, _TRAIN, _META)) -> None:
    """`checksums.json` in a finished step folder: size and sha256 of each file of `items` (process 0)."""
    if jax.process_index() != 0:
        return
    step_dir = Path(step_dir)
    files = {}
    for item in items:
        for f in sorted((step_dir / item).rglob("*")):
            if f.is_file():
                files[f.relative_to(step_dir).as_posix()] = {"size": f.stat().st_size, "sha256": _file_sha256(f)}
    text = json.dumps({"algorithm": "sha256", "files": files}, indent=1) + "\n"
    atomic_write(step_dir / CHECKSUMS_NAME, lambda f: f.write(text.encode("utf-8")))


def verify_files(step_dir, items) -> bool:
    """Check the files of `items` against the step's `checksums.json` before orbax reads them.

    True when verified, False when the step has no `checksums.json` (saved before they existed);
    DamagedCheckpoint naming the file otherwise.
    """
    step_dir = Path(step_dir)
    record_path = step_dir / CHECKSUMS_NAME
    if not record_path.exists():
        return False
    try:
        files = json.loads(record_path.read_text(encoding="utf-8"))["files"]
        files = {str(k): (int(v["size"]), str(v["sha256"])) for k, v in files.items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DamagedCheckpoint(f"{record_path} is damaged ({type(e).__name__})") from None
    for name, (size, digest) in sorted(files.items()):
        if name.split("/")[0] not in items:
            continue
        path = step_dir / name
        if not path.is_file():
            raise DamagedCheckpoint(f"{path} is missing (listed in {CHECKSUMS_NAME})")
        actual = path.stat().st_size
        if actual != size:
            raise DamagedCheckpoint(f"{path} is damaged: {actual:,} bytes, {size:,} were saved")
        if _file_sha256(path) != digest:
            raise DamagedCheckpoint(f"{path} is damaged: its sha256 differs from the one recorded at saving")
    return True


def verify_arrays(tree, prefix: str, recorded: dict | None, where) -> None:
    """Compare restored arrays with the checksums recorded at saving (none recorded: nothing to check)."""
    if not recorded:
        return
    for name, digest in array_checksums(tree, prefix).items():
        if recorded.get(name, digest) != digest:
            raise DamagedCheckpoint(f"{where} is damaged: array {name} differs from the one saved (sha256)")


def _read_meta(step_dir: Path) -> dict:
    """A step's `meta` item as JSON, read without orbax; {} when missing or unreadable."""
    try:
        meta = json.loads((step_dir / _META / "metadata").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


# ---- config.json -----------------------------------------------------------------------------


def config_record(model: ModelConfig, vocab, data_fingerprint: str, data_path, flags: dict) -> dict:
    """What `config.json` holds for a training run: the model, its vocabulary, the data it saw, its flags."""
    return {**model.to_dict(), "vocab": list(vocab.itos), "data_fingerprint": data_fingerprint,
            "data_path": str(data_path), "flags": flags}


def save_config(ckpt_dir, config: dict) -> None:
    """Write `config.json` atomically (only process 0 writes when several hosts share a folder)."""
    if jax.process_index() != 0:
        return
    text = json.dumps(config, ensure_ascii=False, indent=1) + "\n"
    atomic_write(Path(ckpt_dir) / CONFIG_NAME, lambda f: f.write(text.encode("utf-8")))


def load_config(ckpt_dir) -> dict:
    """Read and validate `config.json`; UserError if it is missing, unreadable or incomplete."""
    path = Path(ckpt_dir) / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"no {CONFIG_NAME} in {ckpt_dir}: not a checkpoint directory")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is corrupt: {e}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is corrupt: expected a JSON object")
    try:
        ModelConfig.from_dict(config)
    except ValueError as e:
        raise UserError(f"{path} is corrupt: {e}") from None
    missing = [k for k in RECORD_KEYS if k not in config]
    if missing:
        raise UserError(f"{path} is corrupt: missing keys {missing}")
    if not isinstance(config["vocab"], list) or len(config["vocab"]) != config["vocab_size"]:
        raise UserError(f"{path} is corrupt: vocab has {len(config['vocab'])} tokens, vocab_size says "
                        f"{config['vocab_size']}")
    return config


def vocab_from_config(config: dict):
    from rnnjax.poetry.data import Vocab

    return Vocab(list(config["vocab"]))


# ---- orbax -------------------------------------------------------------------------------------


def _val_loss(metrics) -> float:
    return metrics["val_loss"]


def open_manager(ckpt_dir, *, read_only: bool = False) -> ocp.CheckpointManager:
    """Keep the latest `KEEP_LATEST` steps (to resume) and the one with the lowest validation loss.

    Saves are synchronous: on CPU a donated parameter buffer could otherwise be reused by the
    next step while an asynchronous save is still reading it.
    """
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=KEEP_LATEST),
        checkpoint_managers.BestN(get_metric_fn=_val_loss, reverse=True, n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=None if read_only else policy,
        best_fn=_val_loss,
        best_mode="min",
        enable_async_checkpointing=False,
        create=not read_only,
        read_only=read_only,
        save_interval_steps=0 if read_only else 1,
    )
    return ocp.CheckpointManager(Path(ckpt_dir).absolute(), options=options)


def has_steps(ckpt_dir) -> bool:
    """Whether `ckpt_dir` holds saved steps (orbax names each step's folder by its number)."""
    ckpt_dir = Path(ckpt_dir)
    return ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())


def save_step(manager: ocp.CheckpointManager, step: int, params, opt_state, meta: dict,
              metrics: dict | None = None) -> None:
    """Save one training step (params, optimizer state, `meta` as JSON) and wait until it is on disk.

    `metrics` ({"val_loss": ...}) makes the step a candidate for "best"; None keeps it only while recent.
    """
    meta = {**meta, "sha256": {**array_checksums(params, _PARAMS),
                               **array_checksums({"opt_state": opt_state}, _TRAIN)}}
    manager.save(step, args=ocp.args.Composite(**{
        _PARAMS: ocp.args.StandardSave(params),
        _TRAIN: ocp.args.StandardSave({"opt_state": opt_state}),
        _META: ocp.args.JsonSave(meta)}), metrics=metrics, force=True)
    manager.wait_until_finished()
    write_file_checksums(step_dir(manager.directory, step))


def restore_step(manager: ocp.CheckpointManager, step: int, params_like, opt_state_like) -> tuple[Any, Any, dict]:
    """(params, opt_state, meta) of a saved step, shaped, typed and sharded like the `*_like` trees.

    DamagedCheckpoint (one line naming the file or array) when the step is damaged; UserError when its
    files are intact (checksums match) but orbax still cannot read them into these trees.
    """
    folder = step_dir(manager.directory, step)
    intact = verify_files(folder, (_PARAMS, _TRAIN, _META))
    try:
        with _quiet_orbax():
            restored = manager.restore(step, args=ocp.args.Composite(**{
                _PARAMS: ocp.args.StandardRestore(_abstract(params_like)),
                _TRAIN: ocp.args.StandardRestore({"opt_state": _abstract(opt_state_like)}),
                _META: ocp.args.JsonRestore()}))
    except Exception as e:  # orbax raises assorted types for a damaged step
        # Files verified intact: not damage but a step this code cannot read (say, another optimizer).
        error = UserError if intact else DamagedCheckpoint
        raise error(f"cannot read {folder}: {_orbax_error(e)}") from None
    meta = restored[_META] if isinstance(restored[_META], dict) else {}
    verify_arrays(restored[_PARAMS], _PARAMS, meta.get("sha256"), folder / _PARAMS)
    verify_arrays({"opt_state": restored[_TRAIN]["opt_state"]}, _TRAIN, meta.get("sha256"), folder / _TRAIN)
    return restored[_PARAMS], restored[_TRAIN]["opt_state"], meta


def step_dir(ckpt_dir, step: int) -> Path:
    """The folder orbax keeps step `step` in."""
    return Path(ckpt_dir) / str(step)


def set_aside(manager: ocp.CheckpointManager, step: int) -> Path:
    """Rename a damaged step to `damaged-step-<step>` (kept for inspection; orbax no longer sees it, so
    the step can be saved again) and refresh `manager`. Every process calls it; process 0 renames."""
    src = step_dir(manager.directory, step)
    dst, n = src.with_name(f"{DAMAGED_PREFIX}{step}"), 1
    while dst.exists():
        n += 1
        dst = src.with_name(f"{DAMAGED_PREFIX}{step}-{n}")
    if jax.process_index() == 0:
        src.rename(dst)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"rnnjax set aside step {step}")
    manager.reload()
    return dst


def _abstract(tree):
    """ShapeDtypeStructs as an orbax restore target (on the first local device when `tree` is unsharded)."""
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def f(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None) or default)

    return jax.tree.map(f, tree)


def export_model(out_dir, model: PoetryModel, config: dict, dtype=None) -> None:
    """A params-only checkpoint (step 0) + config.json, for shipping a trained model.

    `dtype` ("float16", "bfloat16" or a jnp dtype) halves the files; `load_model` casts back to float32.
    """
    name = jnp.dtype(dtype or jnp.float32).name
    if name not in _DTYPES:
        raise UserError(f"export dtype must be one of {sorted(_DTYPES)}, got {name}")
    out_dir = Path(out_dir)
    if (out_dir / CONFIG_NAME).exists() or (out_dir.exists() and any(out_dir.iterdir())):
        raise UserError(f"{out_dir} is not empty; export into a new folder")
    params = nnx.state(model, nnx.Param)
    params = jax.tree.map(lambda a: a.astype(_DTYPES[name]), params)
    config = {**config, **model.config.to_dict(), "param_dtype": name, "exported": True}
    meta = {"step": 0, "exported": True, "sha256": array_checksums(params, _PARAMS)}
    mngr = open_manager(out_dir)
    mngr.save(0, args=ocp.args.Composite(**{_PARAMS: ocp.args.StandardSave(params), _META: ocp.args.JsonSave(meta)}))
    mngr.wait_until_finished()
    mngr.close()
    write_file_checksums(step_dir(out_dir, 0), (_PARAMS, _META))
    save_config(out_dir, config)


def _key(path) -> str:
    """'embeddings.embedding' for a tree path, whatever key types orbax or nnx use."""
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return ".".join(n for n in names if n != "value")


def _stored_arrays(item_dir: Path) -> dict[str, tuple[tuple[int, ...], Any]]:
    """name -> (shape, dtype) of a saved params item, read from its metadata (no array data)."""
    try:
        with _quiet_orbax():
            meta = ocp.StandardCheckpointer().metadata(item_dir.absolute()).item_metadata
        leaves = jax.tree_util.tree_flatten_with_path(meta)[0]
    except Exception as e:  # a missing or damaged item
        raise DamagedCheckpoint(f"cannot read {item_dir}: {_orbax_error(e)}") from None
    if not leaves or any(getattr(m, "shape", None) is None for _, m in leaves):
        raise DamagedCheckpoint(f"cannot read {item_dir}: its array index (manifest.ocdbt) is missing or damaged")
    return {_key(path): (tuple(m.shape), m.dtype) for path, m in leaves}


def load_model(ckpt_dir, step=None):
    """(model, vocab, config) from a training checkpoint folder (best step, else latest) or an export.

    Parameters come back as float32 whatever they were stored as. UserError if anything is missing,
    corrupt or does not match config.json.
    """
    ckpt_dir = Path(ckpt_dir)
    config = load_config(ckpt_dir)
    mngr = open_manager(ckpt_dir, read_only=True)
    try:
        steps, best, latest = mngr.all_steps(), mngr.best_step(), mngr.latest_step()
    finally:
        mngr.close()
    if not steps:
        raise UserError(f"{ckpt_dir} has a {CONFIG_NAME} but no saved checkpoint steps")
    if step is None:
        step = best if best is not None else latest
    elif step not in steps:
        raise UserError(f"{ckpt_dir} has no step {step}; saved steps: {sorted(steps)}")
    model_config = ModelConfig.from_dict(config)
    model = nnx.eval_shape(lambda: PoetryModel.from_config(model_config, rngs=nnx.Rngs(0)))
    expected = nnx.state(model, nnx.Param)
    folder = step_dir(ckpt_dir, step)
    intact = verify_files(folder, (_PARAMS, _META))
    stored = _stored_arrays(folder / _PARAMS)
    want = {_key(path): tuple(x.shape) for path, x in jax.tree_util.tree_flatten_with_path(expected)[0]}
    have = {k: shape for k, (shape, _) in stored.items()}
    if want != have:
        problems = [f"{k}: stored {have.get(k)}, config.json implies {want.get(k)}"
                    for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
        raise UserError(f"step {step} in {ckpt_dir} does not match its {CONFIG_NAME}: {problems[0]}"
                        + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    flat = jax.tree_util.tree_flatten_with_path(expected)
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_unflatten(flat[1], [
        jax.ShapeDtypeStruct(x.shape, stored[_key(path)][1], sharding=default) for path, x in flat[0]])
    try:
        with _quiet_orbax():
            restored = ocp.StandardCheckpointer().restore(folder.absolute() / _PARAMS, target)
    except Exception as e:  # orbax raises assorted types for a missing or damaged file
        raise (UserError if intact else DamagedCheckpoint)(f"cannot read {folder / _PARAMS}: {_orbax_error(e)}") \
            from None
    verify_arrays(restored, _PARAMS, _read_meta(folder).get("sha256"), folder / _PARAMS)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), restored)
    if jax.tree.leaves(nnx.state(model, nnx.Not(nnx.Param))):  # dropout's random key: made for real
        model = PoetryModel.from_config(model_config, rngs=nnx.Rngs(0))
    nnx.update(model, params)  # the abstract model built above gets its arrays: no random init to discard
    model.eval()
    return model, vocab_from_config(config), config


def recorded_quality(ckpt_dir) -> tuple[int | None, float | None]:
    """(training step, validation loss) of the step `load_model(ckpt_dir)` would use, as recorded when it
    was saved, reading no array: a training folder's best step (else its latest) and the `val_loss` of
    its meta; an export's `source_step` and `val_loss` from its config.json. None for what was not
    recorded, (None, None) for a folder that is not a readable checkpoint (load_model says why)."""
    ckpt_dir = Path(ckpt_dir)
    try:
        config = json.loads((ckpt_dir / CONFIG_NAME).read_text(encoding="utf-8"))
        if not has_steps(ckpt_dir) or not isinstance(config, dict):
            return None, None
        if config.get("exported"):
            step, loss = config.get("source_step"), config.get("val_loss")
        else:
            with _quiet_orbax():
                mngr = open_manager(ckpt_dir, read_only=True)
                try:
                    best, latest = mngr.best_step(), mngr.latest_step()
                finally:
                    mngr.close()
            step = best if best is not None else latest
            loss = _read_meta(step_dir(ckpt_dir, step)).get("val_loss") if step is not None else None
    except Exception:  # anything unreadable: load_model names the problem
        return None, None
    step = step if isinstance(step, int) and not isinstance(step, bool) else None
    loss = float(loss) if isinstance(loss, (int, float)) and not isinstance(loss, bool) else None
    return step, loss
