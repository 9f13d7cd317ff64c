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
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers

from rnnjax.poetry.errors import UserError
from rnnjax.poetry.model import CELLS, PoetryModel

CONFIG_NAME = "config.json"
REQUIRED_KEYS = (
    "cell", "vocab_size", "embedding_dim", "hidden_dim", "num_layers", "dropout", "vocab",
    "data_fingerprint", "flags",
)
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


def _atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder + rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_config(ckpt_dir, config: dict) -> None:
    """Write `config.json` atomically (only process 0 writes when several hosts share a folder)."""
    if jax.process_index() != 0:
        return
    _atomic_write_text(Path(ckpt_dir) / CONFIG_NAME, json.dumps(config, ensure_ascii=False, indent=1) + "\n")


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
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise UserError(f"{path} is corrupt: missing keys {missing}")
    if config["cell"] not in CELLS:
        raise UserError(f"{path} is corrupt: unknown cell {config['cell']!r}")
    if not isinstance(config["vocab"], list) or len(config["vocab"]) != config["vocab_size"]:
        raise UserError(f"{path} is corrupt: vocab has {len(config['vocab'])} tokens, vocab_size says "
                        f"{config['vocab_size']}")
    return config


def model_config(model: PoetryModel) -> dict:
    """The config keys that fix the model's shape."""
    return {
        "cell": model.cell,
        "vocab_size": model.vocab_size,
        "embedding_dim": model.embedding_dim,
        "hidden_dim": model.hidden_dim,
        "num_layers": model.num_layers,
        "dropout": float(model.rnn.config.dropout),
    }


def build_model(config: dict, rngs: nnx.Rngs | None = None) -> PoetryModel:
    return PoetryModel(
        config["vocab_size"], config["embedding_dim"], config["hidden_dim"], config["num_layers"],
        config["cell"], config["dropout"], rngs=rngs or nnx.Rngs(0),
    )


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


def abstract(tree, dtype=None):
    """ShapeDtypeStructs (optionally with another dtype) as an orbax restore target."""
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def f(x):
        return jax.ShapeDtypeStruct(x.shape, dtype or x.dtype, sharding=getattr(x, "sharding", None) or default)

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
    config = {**config, **model_config(model), "param_dtype": name, "exported": True}
    mngr = open_manager(out_dir)
    mngr.save(0, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave({"step": 0, "exported": True})))
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
    model = nnx.eval_shape(lambda: build_model(config))
    expected = nnx.state(model, nnx.Param)
    stored = _stored_arrays(ckpt_dir / str(step) / "params")
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
        restored = ocp.StandardCheckpointer().restore(ckpt_dir.absolute() / str(step) / "params", target)
    except Exception as e:  # orbax raises assorted types for a missing or damaged file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot restore step {step} from {ckpt_dir}: {first}") from None
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), restored)
    model = build_model(config)
    nnx.update(model, params)
    model.eval()
    return model, vocab_from_config(config), config
