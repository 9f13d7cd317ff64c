"""Export a trained checkpoint for shipping, in half precision when that costs no quality.

    python -m rnnjax.poetry export --checkpoint checkpoints/lstm --out pretrained/tang-lstm

Measures validation perplexity with the float32 parameters and again after a round trip through each
candidate storage dtype (float16, then bfloat16); keeps the first whose perplexity is within
``--tolerance`` (0.5%) of float32's, else float32. The folder is written beside ``--out`` and renamed
into place at the end, so an interrupted export leaves nothing half-written.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from rnnjax.poetry.config import DEFAULT_DATA
from rnnjax.poetry.errors import UserError, cli_main

CANDIDATES = ("float16", "bfloat16")


TOLERANCE = 0.005  # relative validation-perplexity change a half-precision export may cost


def _folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def export(checkpoint, out, data=DEFAULT_DATA, tolerance=TOLERANCE, say=print) -> tuple[str, dict]:
    """Returns (dtype kept, {dtype: perplexity})."""
    import math

    from rnnjax.poetry.checkpoint import export_model, load_config, load_model, recorded_quality, save_config
    from rnnjax.poetry.evaluate import validation_perplexity

    out = Path(out)
    if out.exists():
        raise UserError(f"{out} already exists; remove it or choose another --out")
    model, vocab, config = load_model(checkpoint)
    source_step = recorded_quality(checkpoint)[0]
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
        # What generate weighs when it picks its default model: the training step and the measured quality.
        save_config(work / chosen, {**load_config(work / chosen), "source_step": source_step,
                                    "val_loss": math.log(ppl[chosen])})
        (work / chosen).rename(out)
        say(f"kept {chosen}: {out} ({_folder_mb(out):.1f} MB)")
        return chosen, ppl
    finally:
        shutil.rmtree(work, ignore_errors=True)


_MODES = ("--checkpoint DIR --out DIR (half-precision export), --checkpoint DIR --to-torch FILE.pth, "
          "or --from-torch FILE.pth --vocab NPZ --out DIR")


@cli_main
def main(argv=None) -> None:
    from rnnjax.poetry.cli import ArgumentParser

    p = ArgumentParser(
        prog="python -m rnnjax.poetry export", allow_abbrev=False,
        description=__doc__.splitlines()[0] + " Or convert to and from the tutorial's torch Net.",
        epilog="modes: " + _MODES + ". The tutorial's Net is LSTM-only: a GRU or Elman checkpoint exports "
               "with gru.* / rnn.* keys, for a Net whose recurrent layer is that cell.")
    p.add_argument("--checkpoint", metavar="DIR", help="training checkpoint folder (best step is used) or exported model")
    p.add_argument("--out", metavar="DIR", help="new folder to write, e.g. pretrained/tang-lstm")
    p.add_argument("--data", help="corpus for validation perplexity (half-precision export; "
                   f"default {DEFAULT_DATA})")
    p.add_argument("--tolerance", type=float, help="allowed relative perplexity change (half-precision export; "
                   f"default {TOLERANCE})")
    p.add_argument("--to-torch", metavar="FILE.pth",
                   help="write --checkpoint as the state dict the tutorial's Net loads (strict=True), float32, "
                        "plus the vocabulary beside it as FILE.vocab.json")
    p.add_argument("--from-torch", metavar="FILE.pth",
                   help="import a tutorial-style Net's state dict (read with torch.load(weights_only=True)) into "
                        "a checkpoint folder --out; cell and sizes come from its shapes")
    p.add_argument("--vocab", metavar="NPZ",
                   help="with --from-torch: the tang.npz the model was trained on (the tutorial's own, with "
                        "--trust-pickle, or one converted by `python -m rnnjax.poetry data --import-tutorial`)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="with --vocab: allow the tutorial's pickled npz (only for files you trust)")
    args = p.parse_args(argv)

    given = {f"--{k.replace('_', '-')}" for k, v in vars(args).items() if v is not None and v is not False}

    def only(allowed: set, mode: str) -> None:
        extra = sorted(given - allowed)
        if extra:
            raise UserError(f"{extra[0]} does not combine with {mode}; modes: {_MODES}")

    if args.from_torch:
        only({"--from-torch", "--vocab", "--out", "--trust-pickle"}, "--from-torch")
        if not args.vocab or not args.out:
            raise UserError(f"--from-torch needs {'--vocab NPZ' if not args.vocab else '--out DIR'}; modes: {_MODES}")
        from rnnjax.poetry.tutorial import import_checkpoint

        import_checkpoint(args.from_torch, args.vocab, args.out, trust_pickle=args.trust_pickle)
    elif args.to_torch:
        only({"--to-torch", "--checkpoint"}, "--to-torch")
        if not args.checkpoint:
            raise UserError(f"--to-torch needs --checkpoint DIR; modes: {_MODES}")
        from rnnjax.poetry.tutorial import export_checkpoint

        export_checkpoint(args.checkpoint, args.to_torch)
    else:
        only({"--checkpoint", "--out", "--data", "--tolerance"}, "the half-precision export")
        if not args.checkpoint or not args.out:
            raise UserError(f"{'--checkpoint' if not args.checkpoint else '--out'} is required; modes: {_MODES}")
        export(args.checkpoint, args.out,
               DEFAULT_DATA if args.data is None else args.data,
               TOLERANCE if args.tolerance is None else args.tolerance)

if __name__ == "__main__":
    main()
