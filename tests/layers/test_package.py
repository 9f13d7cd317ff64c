"""The library as a package: what ``import rnnjax`` pulls in, which way imports go, the settings as
real attributes, and the README's layer example."""
import ast
import json
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import rnnjax
from rnnjax import recurrent

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rnnjax"
APP_ONLY = ("optax", "orbax", "opencc", "pypinyin", "matplotlib", "tqdm")


def _modules_after(code):
    """The names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nnames = sorted(sys.modules)\nimport json\nprint(json.dumps(names))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_import_rnnjax_pulls_in_nothing_of_the_app():
    """``import rnnjax`` loads no module of the app (``rnnjax.poetry``) nor any of its dependencies.

    ``optax`` is the exception that proves nothing: flax 0.12's ``flax.nnx`` imports optax itself
    (``from flax import nnx`` alone puts it in ``sys.modules``), so rnnjax cannot avoid it. What is
    checked instead is that rnnjax adds nothing to what ``from flax import nnx`` imports, except its
    own modules and the standard library's.
    """
    baseline = _modules_after("from flax import nnx")
    ours = _modules_after("import rnnjax")
    assert sorted(m for m in ours if m.startswith("rnnjax.poetry")) == []
    for name in APP_ONLY:
        assert name not in ours or name in baseline, name
    added = {m.split(".")[0] for m in ours - baseline} - {"rnnjax"} - set(sys.stdlib_module_names)
    assert added == set()


def _library_files():
    return sorted(p for p in PACKAGE.rglob("*.py") if "poetry" not in p.relative_to(PACKAGE).parts)


def _imported_modules(path):
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def test_no_library_module_imports_the_app():
    files = _library_files()
    assert PACKAGE / "nn.py" in files and PACKAGE / "kernels" / "lstm.py" in files
    bad = {str(p.relative_to(ROOT)): m for p in files for m in _imported_modules(p)
           if m == "rnnjax.poetry" or m.startswith("rnnjax.poetry.")}
    assert bad == {}


@pytest.mark.parametrize("make", [lambda: rnnjax.LSTM(3, 4, 2, dropout=0.5, proj_size=2, rngs=nnx.Rngs(0)),
                                  lambda: rnnjax.GRU(3, 4, bidirectional=True, rngs=nnx.Rngs(0)),
                                  lambda: rnnjax.RNN(3, 4, nonlinearity="relu", rngs=nnx.Rngs(0))])
def test_settings_are_static_attributes_and_jit_sees_only_params(make):
    module = make()
    for name in recurrent.Config._fields:  # real instance attributes, not a __getattr__ proxy
        assert name in vars(module), name
    assert module.config == recurrent.Config(*(vars(module)[f] for f in recurrent.Config._fields))
    names = sorted(path for path, _ in nnx.to_flat_state(nnx.state(module, nnx.Param)))
    assert names == [(k,) for k in sorted(module.torch_state_dict())]
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    assert {type(v) for _, v in nnx.to_flat_state(rest)} <= {nnx.RngKey, nnx.RngCount}  # the dropout stream

    x = jax.random.normal(jax.random.key(0), (5, 2, 3))

    @jax.jit
    def run(params, x):
        return nnx.merge(graphdef, params, rest)(x, deterministic=True)[0]

    np.testing.assert_allclose(run(params, x), module(x, deterministic=True)[0], rtol=1e-6, atol=1e-6)


def _readme_layer_example():
    text = (ROOT / "README.md").read_text()
    heading = text.index("## The layers, side by side with torch")
    match = re.compile(r"^```python\n(.*?)^```", re.S | re.M).search(text, heading)
    assert match, "no ```python block after the heading"
    return match.group(1)


def test_readme_layer_example_runs_and_matches_torch():
    namespace = {}
    exec(compile(_readme_layer_example(), "README.md (layers example)", "exec"), namespace)
    # The example's claim: rnnjax's LSTM equals torch's to float32 rounding.
    np.testing.assert_allclose(namespace["out_j"], namespace["out_t"].detach().numpy(), rtol=1e-5, atol=1e-6)
    for name in ("h", "c", "h1", "c1"):
        np.testing.assert_allclose(namespace[f"{name}_j"], namespace[f"{name}_t"].detach().numpy(),
                                   rtol=1e-5, atol=1e-6)
