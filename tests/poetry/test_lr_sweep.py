"""bench/lr_sweep.py's configurations mean what their names say, whatever train.py's defaults are."""
import importlib.util
from pathlib import Path

import pytest

import train as train_cli
from rnnjax.poetry.cli import config_from_args
from rnnjax.poetry.config import TrainConfig
from rnnjax.poetry.training import lr_schedule

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("lr_sweep", ROOT / "bench" / "lr_sweep.py")
lr_sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lr_sweep)

LAST = 5806  # the 30-minute sweep's length


@pytest.mark.parametrize("name", sorted(lr_sweep.CONFIGS))
def test_config_flags_give_the_named_schedule(name):
    # A name like "cos-6e-3" or "cos-6e-3-drop0.2": schedule, peak rate, optional dropout.
    kind, mantissa, exponent = name.split("-")[:3]
    peak = float(f"{mantissa}-{exponent}")
    cfg = config_from_args(TrainConfig, train_cli.parse_args(lr_sweep.CONFIGS[name]))
    lr = lr_schedule(cfg, LAST)
    assert cfg.dropout == (0.2 if name.endswith("drop0.2") else 0.0)
    if kind == "const":  # the whole run at the peak: no warmup, no decay
        assert all(float(lr(s)) == pytest.approx(peak, rel=1e-6) for s in (0, 1, 200, LAST // 2, LAST))
    else:
        assert float(lr(0)) < peak / 10  # a warmup
        assert float(lr(cfg.warmup_steps)) == pytest.approx(peak, rel=1e-6)
        floor = cfg.lr_floor
        assert float(lr(LAST)) == pytest.approx(floor * peak, rel=1e-5)  # decayed to the floor by the end
        # Of the way from the peak to the floor: halfway through the decay a half cosine and a straight
        # line have both come half way; a quarter of the way in the cosine is higher (0.854 against 0.75).
        for part, expect in ((2, 0.5), (4, {"cos": 0.854, "lin": 0.75}[kind])):
            at = float(lr(cfg.warmup_steps + (LAST - cfg.warmup_steps) // part)) / peak
            assert (at - floor) / (1 - floor) == pytest.approx(expect, abs=0.01)
