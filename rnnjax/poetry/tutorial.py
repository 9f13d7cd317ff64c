"""To and from the tutorial's torch ``Net``: import a trained ``.pth`` as a checkpoint folder, export one back.

    python -m rnnjax.poetry export --from-torch tang_199.pth --vocab data/tang.npz --out checkpoints/tutorial
    python -m rnnjax.poetry export --checkpoint checkpoints/lstm --to-torch tang.pth

Import reads the state dict with ``torch.load(weights_only=True)`` (no code runs), finds the cell and the
sizes from its shapes (``lstm.``/``gru.``/``rnn.`` prefix, 4/3/1 gates per ``weight_hh`` row block,
``weight_ih_l{k}`` per layer, ``embeddings.weight`` for the embedding), checks every key and shape
against the vocabulary of ``--vocab`` (whose ids the weights were trained on, so its order is kept),
and writes an ordinary exported checkpoint (``config.json`` + params) that ``generate.py`` and the
evaluate command read. The folder is written beside ``--out`` and renamed into place at the end.

Export writes the state dict the tutorial's ``Net`` loads with ``load_state_dict(strict=True)``
(float32 tensors, keys ``embeddings.weight``, ``lstm.*``, ``linear1.*``; a GRU or Elman checkpoint
keeps its own ``gru.*``/``rnn.*`` prefix) and the vocabulary beside it as ``FILE.vocab.json``
(``ix2word`` list, ``word2ix`` object), both written atomically.
"""
from __future__ import annotations

import json
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from rnnjax.poetry.config import ModelConfig
from rnnjax.poetry.errors import UserError
from rnnjax.poetry.files import atomic_write

TORCH_CPU_INSTALL = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # row blocks of weight_hh: torch's gate count per cell
_CELL_OF_GATES = {g: c for c, g in GATES.items()}
_NAMES = {"lstm": "LSTM", "gru": "GRU", "rnn": "Elman RNN"}
_TORCH_CLASSES = {"lstm": "nn.LSTM", "gru": "nn.GRU", "rnn": "nn.RNN"}


def import_torch():
    """The torch module, or a one-line UserError saying how to install its CPU build."""
    try:
        import torch
    except ImportError:
        raise UserError(f"PyTorch is not installed; install its CPU build with `{TORCH_CPU_INSTALL}`") from None
    return torch


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---- reading a .pth ------------------------------------------------------------------------------


def read_state_dict(path) -> dict[str, np.ndarray]:
    """name -> float32 array of a torch state dict saved with ``torch.save(net.state_dict(), path)``.

    Read with ``weights_only=True``: a file holding anything but tensors and containers is refused
    rather than run. UserError (one line) for a missing file, an unreadable one, or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    torch = import_torch()
    with open(path, "rb") as f:
        head = f.read(1)
    if not zipfile.is_zipfile(path) and head != b"\x80":  # torch.save writes a zip, or (legacy) a pickle
        raise UserError(f"{path}: not a file written by torch.save")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise UserError(f"{path}: unreadable torch file ({_first_line(e)})") from None
        raise UserError(f"{path} holds Python objects besides tensors (a whole pickled model?), which "
                        f"torch.load(weights_only=True) will not run; save net.state_dict() instead") from None
    except Exception as e:  # RuntimeError (damaged zip), EOFError, struct.error, ...: torch raises many
        raise UserError(f"{path}: unreadable torch file ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(obj, dict) or not obj:
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a state dict (a dict of tensors, "
                        f"as torch.save(net.state_dict(), path) writes)")
    if all(isinstance(k, str) and k.startswith("module.") for k in obj):  # saved from nn.DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise UserError(f"{path}: not a state dict: entry {k!r} is a {type(v).__name__}, not a tensor "
                            f"(save net.state_dict(), not a training checkpoint)")
        if not v.is_floating_point():
            raise UserError(f"{path}: state dict key {k} is a {v.dtype} tensor, expected floating point")
        out[k] = v.detach().to("cpu", torch.float32).numpy()
    return out


# ---- the Net's shape from its state dict ---------------------------------------------------------


def infer_shape(sd: dict[str, np.ndarray], vocab_size: int | None = None, source="state dict") -> ModelConfig:
    """The ModelConfig (cell, sizes, layers; no dropout) of the tutorial-style Net behind ``sd``.

    Only what decides the shape is checked here; `build_from_state_dict` then checks every key and
    shape. UserError naming the key when ``sd`` is not such a Net or does not fit ``vocab_size``.
    """
    not_net = f"{source} is not the tutorial's Net"
    emb = sd.get("embeddings.weight")
    if emb is None:
        raise UserError(f"{not_net}: missing key embeddings.weight")
    if emb.ndim != 2:
        raise UserError(f"{not_net}: embeddings.weight has shape {tuple(emb.shape)}, expected (vocabulary, embedding)")
    if vocab_size is not None and emb.shape[0] != vocab_size:
        raise UserError(f"embeddings.weight has {emb.shape[0]} rows but the vocabulary has {vocab_size} tokens")
    prefixes = sorted({k.split(".", 1)[0] for k in sd if k.split(".", 1)[0] in GATES})
    if not prefixes:
        raise UserError(f"{not_net}: missing key lstm.weight_ih_l0 (no lstm.*, gru.* or rnn.* keys)")
    if len(prefixes) > 1:
        extra = sorted(k for k in sd if k.startswith(prefixes[1] + "."))[0]
        raise UserError(f"{not_net}: unexpected key {extra} beside {prefixes[0]}.* (two recurrent layers)")
    prefix = prefixes[0]
    reverse = sorted(k for k in sd if k.startswith(prefix + ".") and k.endswith("_reverse"))
    if reverse:
        raise UserError(f"{not_net}: {reverse[0]} is a bidirectional layer's; the Net's recurrent layer "
                        f"runs forward only")
    projected = sorted(k for k in sd if k.startswith(f"{prefix}.weight_hr_l"))
    if projected:
        raise UserError(f"{not_net}: {projected[0]} is a projected LSTM's (proj_size); the Net has none")
    hh_key = f"{prefix}.weight_hh_l0"
    hh = sd.get(hh_key)
    if hh is None:
        raise UserError(f"{not_net}: missing key {hh_key}")
    if hh.ndim != 2 or hh.shape[1] == 0 or hh.shape[0] % hh.shape[1]:
        raise UserError(f"{not_net}: {hh_key} has shape {tuple(hh.shape)}, expected (gates x hidden, hidden)")
    hidden = hh.shape[1]
    gates = hh.shape[0] // hidden
    cell = _CELL_OF_GATES.get(gates)
    if cell is None or (prefix != "rnn" and cell != prefix):
        want = GATES[prefix] if prefix != "rnn" else "4, 3 or 1"
        raise UserError(f"{not_net}: {hh_key} has shape {tuple(hh.shape)}: {gates} x hidden {hidden} rows, "
                        f"expected {want} x hidden for {prefix}.*")
    layers = []
    for k in sd:
        head, _, idx = k.partition(f"{prefix}.weight_ih_l")
        if not head and idx.isdigit():
            layers.append(int(idx))
    num_layers = len(layers)
    if sorted(layers) != list(range(num_layers)):
        gap = min(set(range(max(layers, default=0) + 1)) - set(layers))
        raise UserError(f"{not_net}: missing key {prefix}.weight_ih_l{gap}")
    return ModelConfig(vocab_size=int(emb.shape[0]), embedding_dim=int(emb.shape[1]), hidden_dim=int(hidden),
                       num_layers=num_layers, cell=cell)


def build_from_state_dict(sd: dict[str, np.ndarray], vocab_size: int | None = None, source="state dict"):
    """(PoetryModel holding ``sd``'s weights, its ModelConfig); UserError naming the first key that does not fit."""
    from flax import nnx

    from rnnjax.poetry.model import PoetryModel

    shape = infer_shape(sd, vocab_size, source)
    model = PoetryModel.from_config(shape, rngs=nnx.Rngs(0))
    expected = model.torch_state_dict()
    prefix = next(k.split(".", 1)[0] for k in sd if k.split(".", 1)[0] in GATES)
    given = {(f"{shape.cell}.{k[len(prefix) + 1:]}" if k.startswith(prefix + ".") else k): k for k in sd}
    what = describe(shape)
    missing = [k for k in expected if k not in given]
    if missing:
        shown = missing[0].replace(f"{shape.cell}.", f"{prefix}.", 1)
        raise UserError(f"{source} is not the tutorial's Net: missing key {shown} (for {what})")
    unexpected = sorted(given[k] for k in given if k not in expected)
    if unexpected:
        raise UserError(f"{source} is not the tutorial's Net: unexpected key {unexpected[0]}")
    for k, want in expected.items():
        got = sd[given[k]]
        if got.shape != want.shape:
            raise UserError(f"{source}: key {given[k]} has shape {tuple(got.shape)}, expected "
                            f"{tuple(want.shape)} for {what}")
    try:
        model.load_torch_state_dict({k: sd[given[k]] for k in expected})
    except ValueError as e:  # checked above; kept so a future check of the loader still reads as one line
        raise UserError(f"{source}: {_first_line(e)}") from None
    model.eval()
    return model, shape


# ---- import ----------------------------------------------------------------------------------------


def describe(shape: ModelConfig) -> str:
    """'a 2-layer LSTM with embedding 128, hidden 256'."""
    return (f"a {shape.num_layers}-layer {_NAMES[shape.cell]} with embedding {shape.embedding_dim}, "
            f"hidden {shape.hidden_dim}")


def import_checkpoint(pth, vocab_npz, out, trust_pickle: bool = False, say: Callable = print) -> Path:
    """Write checkpoint folder ``out`` holding the tutorial-style Net in ``pth`` with ``vocab_npz``'s vocabulary.

    Nothing is written unless everything checks out: the folder is built beside ``out`` and renamed.
    """
    from rnnjax.poetry.checkpoint import config_record, export_model
    from rnnjax.poetry.data import fingerprint, load_npz

    pth, vocab_npz, out = Path(pth), Path(vocab_npz), Path(out)
    if out.exists():
        raise UserError(f"{out} already exists; remove it or choose another --out")
    _, vocab = load_npz(vocab_npz, trust_pickle=trust_pickle)
    sd = read_state_dict(pth)
    model, shape = build_from_state_dict(sd, len(vocab), source=str(pth))
    config = config_record(shape, vocab, fingerprint(vocab_npz), vocab_npz, {"imported_from": str(pth)})
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        export_model(work / "model", model, config)
        if out.exists():
            raise UserError(f"{out} appeared while importing; remove it or choose another --out")
        (work / "model").rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"imported {describe(shape)}, vocabulary {shape.vocab_size:,} from {pth}; wrote {out}")
    if _is_tutorial_pickle(vocab_npz):
        say(f"note: the evaluate command reads the converted corpus, not the pickled one; for its data check "
            f"to match, convert first (python -m rnnjax.poetry data --import-tutorial {vocab_npz} --trust-pickle) "
            f"and import with --vocab data/tang.npz")
    return out


def _is_tutorial_pickle(npz: Path) -> bool:
    try:
        with zipfile.ZipFile(npz) as z:
            return bool({"word2ix.npy", "ix2word.npy"} & set(z.namelist()))
    except (OSError, zipfile.BadZipFile):
        return False


# ---- export ----------------------------------------------------------------------------------------


def vocab_json_path(pth) -> Path:
    """``tang.pth`` -> ``tang.vocab.json``, beside it."""
    return Path(pth).with_suffix(".vocab.json")


def export_checkpoint(checkpoint, pth, say: Callable = print) -> tuple[Path, Path]:
    """Write ``pth`` (the Net's state dict, float32 torch tensors) and ``pth``'s ``.vocab.json``; both atomic."""
    from rnnjax.poetry.checkpoint import load_model

    pth = Path(pth)
    vocab_path = vocab_json_path(pth)
    if pth.is_dir() or vocab_path.is_dir():
        raise UserError(f"{pth if pth.is_dir() else vocab_path} is a folder; --to-torch takes a file name")
    torch = import_torch()
    model, vocab, _ = load_model(checkpoint)
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C"))
             for k, v in model.torch_state_dict().items()}
    vocab_doc = {
        "ix2word": list(vocab.itos),
        "word2ix": {w: i for i, w in enumerate(vocab.itos)},
        "net": {"cell": model.cell, "vocab_size": model.vocab_size, "embedding_dim": model.embedding_dim,
                "hidden_dim": model.hidden_dim, "num_layers": model.num_layers},
    }
    text = json.dumps(vocab_doc, ensure_ascii=False) + "\n"
    atomic_write(pth, lambda f: torch.save(state, f))
    atomic_write(vocab_path, lambda f: f.write(text.encode("utf-8")))
    say(f"wrote {pth} ({len(state)} tensors, {model.cell}.* keys) and {vocab_path} ({len(vocab):,} tokens)")
    if model.cell != "lstm" or model.num_layers != 2:
        say(f"note: the tutorial's Net is a 2-layer LSTM; this is a {model.num_layers}-layer "
            f"{_NAMES[model.cell]}, so load it into a Net whose recurrent layer is "
            f"{_TORCH_CLASSES[model.cell]}(..., num_layers={model.num_layers}) "
            f"named `{model.cell}`")
    return pth, vocab_path
