"""``python -m rnnjax.poetry <command> [flags]``: one entry point for the app's commands."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "data": ("rnnjax.poetry.data.__main__", "fetch, clean and encode the corpus into data/tang.npz"),
    "evaluate": ("rnnjax.poetry.evaluate", "validation perplexity and generation quality of a checkpoint"),
    "export": ("rnnjax.poetry.export", "ship a checkpoint (half precision when quality holds); import or export a torch .pth"),
    "meter": ("rnnjax.poetry.prosody", "格律 of the corpus's 绝句 and 律诗 (or of one poem, --poem) after 平水韵"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        listing = "\n".join(f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items())
        usage = f"usage: python -m rnnjax.poetry <command> [flags]\n\ncommands:\n{listing}"
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        print(usage, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    module.main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
