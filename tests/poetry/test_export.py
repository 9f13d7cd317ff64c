"""python -m rnnjax.poetry export: half precision only when validation perplexity stays within tolerance."""
import subprocess
import sys

import numpy as np
import pytest

from rnnjax.poetry.checkpoint import load_config, load_model
from rnnjax.poetry.errors import UserError
from rnnjax.poetry.export import export


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, tiny_corpus, tmp_path_factory):
    """(a folder for the outputs, the training folder of conftest's tiny run, its corpus)."""
    return tmp_path_factory.mktemp("export"), tiny_checkpoint, tiny_corpus


def test_keeps_float16_when_quality_holds(trained):
    root, ckpt, data = trained
    kept, ppl = export(ckpt, root / "out16", data, tolerance=0.005, say=lambda *_: None)
    assert kept == "float16"
    assert abs(ppl["float16"] / ppl["float32"] - 1) <= 0.005
    assert load_config(root / "out16")["param_dtype"] == "float16"
    # What generate weighs when it picks its default model: the source step and the measured quality.
    from rnnjax.poetry.checkpoint import recorded_quality
    assert recorded_quality(root / "out16") == (recorded_quality(ckpt)[0], pytest.approx(np.log(ppl["float16"])))
    m16, _, _ = load_model(root / "out16")
    m32, _, _ = load_model(ckpt)
    a, b = m16.torch_state_dict(), m32.torch_state_dict()
    assert all(a[k].dtype == np.float32 for k in a)  # cast back on load
    assert all(np.allclose(a[k], b[k], rtol=1e-3, atol=1e-4) for k in a)
    assert not any(p.name.startswith(".out16-") for p in root.iterdir())  # no work folder left


def test_falls_back_to_float32_when_tolerance_is_zero(trained):
    root, ckpt, data = trained
    kept, ppl = export(ckpt, root / "out32", data, tolerance=0.0, say=lambda *_: None)
    # float16 and bfloat16 rounding both move the perplexity a little: neither is within 0
    assert ppl["float16"] != ppl["float32"] and ppl["bfloat16"] != ppl["float32"]
    assert kept == "float32"
    assert load_config(root / "out32")["param_dtype"] == "float32"


def test_refuses_existing_output_and_missing_data(trained):
    root, ckpt, data = trained
    with pytest.raises(UserError, match="already exists"):
        export(ckpt, ckpt, data)
    with pytest.raises(UserError, match="not found"):
        export(ckpt, root / "never", root / "missing.npz")
    assert not (root / "never").exists()
    out = subprocess.run([sys.executable, "-m", "rnnjax.poetry.export", "--checkpoint", str(root / "nothing"),
                          "--out", str(root / "x")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
