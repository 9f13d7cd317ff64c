"""Export a trained checkpoint for shipping, in half precision when that costs no quality.

    python -m rnnjax.export --checkpoint checkpoints/lstm --out pretrained/tang-lstm

Measures validation perplexity with the float32 parameters and again after a round trip through each
candidate storage dtype (float16, then bfloat16); keeps the first whose perplexity is within
``--tolerance`` (0.5%) of float32's, else float32. The folder is written beside ``--out`` and renamed
into place at the end, so an interrupted export leaves nothing half-written.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from rnnjax.errors import UserError, cli_main

CANDIDATES = ("float16", "bfloat16")


def _folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def export(checkpoint, out, data="data/tang.npz", tolerance=0.005, say=print) -> tuple[str, dict]:
    """Returns (dtype kept, {dtype: perplexity})."""
    from rnnjax.checkpoint import export_model, load_model
    from rnnjax.evaluate import validation_perplexity

    out = Path(out)
    if out.exists():
        raise UserError(f"{out} already exists; remove it or choose another --out")
    model, vocab, config = load_model(checkpoint)
    ppl = {}
    ppl["float32"], note = validation_perplexity(model, vocab, config, data)
    if ppl["float32"] is None:
        raise UserError(f"cannot measure quality, so cannot choose a dtype: {note}")
    say(f"float32: validation perplexity {ppl['float32']:.3f} ({note})")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        chosen = "float32"
        for dtype in CANDIDATES:
            trial = work / dtype
            export_model(trial, model, config, dtype=dtype)
            m, v, c = load_model(trial)
            ppl[dtype], _ = validation_perplexity(m, v, c, data)
            change = ppl[dtype] / ppl["float32"] - 1
            say(f"{dtype}: validation perplexity {ppl[dtype]:.3f} ({change:+.3%} vs float32), "
                f"{_folder_mb(trial):.1f} MB")
            if abs(change) <= tolerance:
                chosen = dtype
                break
        if chosen == "float32":
            export_model(work / "float32", model, config)
        (work / chosen).rename(out)
        say(f"kept {chosen}: {out} ({_folder_mb(out):.1f} MB)")
        return chosen, ppl
    finally:
        shutil.rmtree(work, ignore_errors=True)


@cli_main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m rnnjax.export", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="training checkpoint folder (best step is used)")
    p.add_argument("--out", required=True, help="new folder to write, e.g. pretrained/tang-lstm")
    p.add_argument("--data", default="data/tang.npz", help="corpus for validation perplexity")
    p.add_argument("--tolerance", type=float, default=0.005, help="allowed relative perplexity change")
    args = p.parse_args(argv)
    export(args.checkpoint, args.out, args.data, args.tolerance)


if __name__ == "__main__":
    main()
