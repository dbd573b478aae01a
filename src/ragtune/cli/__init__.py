"""The `ragtune` command line: the parser, the dispatch, and the one place errors become messages.

Each command group lives in its own module and registers its subcommands here. A `RagtuneError`
prints `error: <message>` and exits with its code; an interrupt exits 130; anything unexpected
prints one line (the stack trace only with `--debug`) and exits 70.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ragtune import __version__
from ragtune.errors import RagtuneError

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """Return the `ragtune` argument parser with every subcommand registered."""
    from ragtune.cli import adapters, ask, bench, demo, finetune, store_commands

    parser = argparse.ArgumentParser(
        prog="ragtune",
        description="Hybrid RAG + fine-tuned specialist agents on LangGraph, offline by default.",
    )
    parser.add_argument("--version", action="version", version=f"ragtune {__version__}")
    parser.add_argument("--database-url", metavar="URL", default=None,
                        help="postgresql:// URL of a PostgreSQL with pgvector (default: "
                             "$RAGTUNE_DATABASE_URL, else the embedded server)")
    parser.add_argument("--home", metavar="DIR", default=None,
                        help="ragtune home for the embedded database and caches "
                             "(default: $RAGTUNE_HOME, else the user data directory)")
    parser.add_argument("--debug", action="store_true", help="show stack traces of errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    store_commands.register(commands)
    ask.register(commands)
    demo.register(commands)
    finetune.register(commands)
    adapters.register(commands)
    bench.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `ragtune` command line and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        code = args.handler(args)
    except RagtuneError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the last line of defence: one line, not a stack trace
        if args.debug:
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)",
              file=sys.stderr)
        return EXIT_INTERNAL
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
