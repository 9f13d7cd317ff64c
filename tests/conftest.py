import os

# Parity tests compare float32 math: keep XLA from using faster-but-looser CPU paths. Under
# pytest-xdist every core already runs a worker: each worker's XLA and torch on one thread, so that
# they do not fight over the cores.
_WORKER = bool(os.environ.get("PYTEST_XDIST_WORKER"))
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" if _WORKER else "")
# The CLIs keep compiled programs in a persistent cache (~/.cache/rnnjax/jax); tests, and the commands
# they start, run without it unless a test sets its own folder.
os.environ.setdefault("RNNJAX_CACHE_DIR", "")

import pytest
from hypothesis import settings

if _WORKER:
    import torch

    torch.set_num_threads(1)

# Deterministic examples: the same run in CI as on a developer's machine.
settings.register_profile("rnnjax", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("rnnjax")

# The app's fixtures import the app inside the fixture, so the layer tests never load it.
TINY_POEMS = ["床前明月光，疑是地上霜。举头望明月，低头思故乡。", "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
              "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。", "红豆生南国，春来发几枝。愿君多采撷，此物最相思。"]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> str:
    """A tang.npz of 40 poems (the 4 TINY_POEMS, 10 times each): one length bucket, 5 batches of 8."""
    from rnnjax.poetry.data import Vocab, encode_poems, save_npz

    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    vocab = Vocab.build(TINY_POEMS)
    save_npz(path, encode_poems(TINY_POEMS * 10, vocab), vocab)
    return str(path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_corpus, tmp_path_factory):
    """A training folder: 2 steps of an LSTM 2x16 (embedding 8) on `tiny_corpus`, a tenth held out."""
    from rnnjax.poetry.training import train

    path = tmp_path_factory.mktemp("ckpt") / "lstm"
    train(data=tiny_corpus, checkpoint_dir=path, embedding_dim=8, hidden_dim=16, batch_size=8, max_steps=2,
          lr=1e-3, schedule="constant", warmup_steps=0, val_fraction=0.1, sample_every=0, quiet=True, progress=False)
    return path
