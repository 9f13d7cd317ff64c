"""``python -m rnnjax.poetry data``: prepare ``data/tang.npz`` (see ``--help``)."""
from __future__ import annotations

import argparse

from rnnjax.poetry.config import DEFAULT_DATA
from rnnjax.poetry.data import import_tutorial, prepare_dataset
from rnnjax.poetry.errors import UserError, cli_main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rnnjax.poetry data",
        description="Fetch the Tang poems (npm chinese-poetry@2.0.1, sha512-checked), convert them "
                    "to simplified Chinese, clean them and write the pickle-free tang.npz.")
    p.add_argument("--out", default=DEFAULT_DATA, help=f"file to write (default {DEFAULT_DATA})")
    p.add_argument("--source", metavar="DIR",
                   help="local chinese-poetry copy instead of npm: [package/]dist/quantangshi/ "
                        "or the git repository's 全唐诗/")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="where the npm tarball is kept (default $RNNJAX_CACHE or ~/.cache/rnnjax)")
    p.add_argument("--traditional", action="store_true",
                   help="keep the original traditional script (no OpenCC t2s)")
    p.add_argument("--force", action="store_true", help="rebuild even if --out exists")
    p.add_argument("--import-tutorial", metavar="PATH",
                   help="convert the tutorial's pickled tang.npz instead (needs --trust-pickle)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow reading a pickled npz: only for files you trust, pickles can run code")
    return p


@cli_main
def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    if args.import_tutorial:
        if args.source or args.traditional:
            raise UserError("--import-tutorial takes the tutorial's data as it is; "
                            "drop --source/--traditional")
        import_tutorial(args.import_tutorial, args.out, trust_pickle=args.trust_pickle,
                        force=args.force)
        return
    prepare_dataset(args.out, source=args.source, cache_dir=args.cache_dir,
                    traditional=args.traditional, force=args.force, trust_pickle=args.trust_pickle)


if __name__ == "__main__":
    main()
