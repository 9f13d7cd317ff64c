"""Checkpoints: orbax steps plus a `config.json` that lets a model be rebuilt without the dataset.

A checkpoint directory holds orbax step folders (`<step>/params`, `<step>/train`, `<step>/meta`) and,
beside them, `config.json` (model shape, cell, vocabulary as a token list, data fingerprint, flags).
Parameters are their own orbax item so that `load_model` restores them without knowing the
optimizer; an exported model is the same layout with only `params` (and possibly float16 storage),
so one loader serves both.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers

from rnnjax.poetry.config import ModelConfig
from rnnjax.poetry.errors import UserError
from rnnjax.poetry.files import atomic_write
from rnnjax.poetry.model import PoetryModel

CONFIG_NAME = "config.json"
# config.json: the ModelConfig fields, flat, beside these (old files have the same layout).
RECORD_KEYS = ("vocab", "data_fingerprint", "flags")
# A step folder's orbax items: only this module knows them.
_PARAMS, _TRAIN, _META = "params", "train", "meta"
KEEP_LATEST = 3
_DTYPES = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}


class _QuietExpectedWarnings(logging.Filter):
    """orbax warns about things we do on purpose: periodic saves without a validation loss, and
    opening a folder read-only to load a model."""

    EXPECTED = ("did not provide metrics", "read only", "read_only=True", "Metadata file does not exist")

    def filter(self, record):
        message = record.getMessage()
        return not any(e in message for e in self.EXPECTED)


logging.getLogger("absl").addFilter(_QuietExpectedWarnings())


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
    manager.save(step, args=ocp.args.Composite(**{
        _PARAMS: ocp.args.StandardSave(params),
        _TRAIN: ocp.args.StandardSave({"opt_state": opt_state}),
        _META: ocp.args.JsonSave(meta)}), metrics=metrics, force=True)
    manager.wait_until_finished()


def restore_step(manager: ocp.CheckpointManager, step: int, params_like, opt_state_like) -> tuple[Any, Any, dict]:
    """(params, opt_state, meta) of a saved step, shaped, typed and sharded like the `*_like` trees.

    UserError (one line) when the step cannot be read.
    """
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**{
            _PARAMS: ocp.args.StandardRestore(_abstract(params_like)),
            _TRAIN: ocp.args.StandardRestore({"opt_state": _abstract(opt_state_like)}),
            _META: ocp.args.JsonRestore()}))
    except Exception as e:  # orbax raises assorted types for a damaged step
        raise UserError(f"cannot resume from {manager.directory} step {step}: {str(e).splitlines()[0]}") from None
    return restored[_PARAMS], restored[_TRAIN]["opt_state"], restored[_META]


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
    mngr = open_manager(out_dir)
    mngr.save(0, args=ocp.args.Composite(**{
        _PARAMS: ocp.args.StandardSave(params), _META: ocp.args.JsonSave({"step": 0, "exported": True})}))
    mngr.wait_until_finished()
    mngr.close()
    save_config(out_dir, config)


def _key(path) -> str:
    """'embeddings.embedding' for a tree path, whatever key types orbax or nnx use."""
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return ".".join(n for n in names if n != "value")


def _stored_arrays(item_dir: Path) -> dict[str, tuple[tuple[int, ...], Any]]:
    """name -> (shape, dtype) of a saved params item, read from its metadata (no array data)."""
    try:
        meta = ocp.StandardCheckpointer().metadata(item_dir.absolute()).item_metadata
        leaves = jax.tree_util.tree_flatten_with_path(meta)[0]
    except Exception as e:  # a missing or damaged item
        raise UserError(f"cannot read {item_dir}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
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
    stored = _stored_arrays(ckpt_dir / str(step) / _PARAMS)
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
        restored = ocp.StandardCheckpointer().restore(ckpt_dir.absolute() / str(step) / _PARAMS, target)
    except Exception as e:  # orbax raises assorted types for a missing or damaged file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot restore step {step} from {ckpt_dir}: {first}") from None
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), restored)
    model = PoetryModel.from_config(model_config, rngs=nnx.Rngs(0))
    nnx.update(model, params)
    model.eval()
    return model, vocab_from_config(config), config
