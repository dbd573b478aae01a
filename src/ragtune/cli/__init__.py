"""The `ragtune` command line: the parser, the dispatch, and the one place errors become messages.

Each command group lives in its own module and registers its subcommands here. A `RagtuneError`
prints `error: <message>` and exits with its code; a lost or unreachable database (psycopg's
`OperationalError` or `InterfaceError`, a pool timeout) is a `DatabaseError` (exit 4); an interrupt
exits 130; anything else unexpected prints one line and exits 70. `--debug` prints the stack trace
first. Everything printed has its passwords redacted: URLs and connection strings can reach error
texts.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Sequence

from ragtune import __version__
from ragtune.errors import DatabaseError, RagtuneError

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def build_parser() -> argparse.ArgumentParser:
    """Return the `ragtune` argument parser with every subcommand registered."""
    from ragtune.cli import adapters, ask, bench, demo, finetune, serve, store_commands

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
    serve.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `ragtune` command line and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        from ragtune.agents.models import quiet_model_libraries

        quiet_model_libraries()  # no library progress bars or deprecation notices unless -v
        # The pool warns about each broken connection it drops; the error line says it once.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        code = args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the last line of defence: one line, not a stack trace
        return report_error(exc, debug=args.debug)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return int(code or 0)


class Terminated(BaseException):
    """SIGTERM arrived: unwind like an interrupt, so transactions roll back and servers detach."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def report_error(exc: Exception, *, debug: bool = False) -> int:
    """Print `exc` as one `error: ...` line (after its stack trace with `debug`); return the code.

    Passwords are redacted from everything printed, the stack trace included: psycopg's messages
    can quote a connection string whole.
    """
    if debug:
        print(_redacted("".join(traceback.format_exception(exc))), file=sys.stderr, end="")
    error = exc if isinstance(exc, RagtuneError) else database_error(exc)
    if error is not None:
        print(f"error: {_redacted(str(error))}", file=sys.stderr)
        return error.exit_code
    print(f"internal error: {type(exc).__name__}: {_redacted(str(exc))}"
          + ("" if debug else " (run with --debug for details)"), file=sys.stderr)
    return EXIT_INTERNAL


def database_error(exc: BaseException) -> DatabaseError | None:
    """Return the `DatabaseError` that `exc` amounts to, or None when it is no database failure.

    A connection that breaks (the server shut down or restarted, the network dropped, the backend
    was terminated) surfaces from psycopg wherever the next statement runs, possibly wrapped by
    the code that ran it; the cause chain is searched for it.
    """
    import psycopg
    from psycopg_pool import PoolTimeout

    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, PoolTimeout):
            return DatabaseError(
                f"no database connection became free in time: {_first_line(cause)}")
        if isinstance(cause, psycopg.OperationalError | psycopg.InterfaceError):
            what = f"{type(cause).__name__}: {_first_line(cause)}"
            sqlstate = getattr(cause, "sqlstate", None) or ""
            if isinstance(cause, psycopg.InterfaceError) or sqlstate[:2] in ("", "08", "57"):
                return DatabaseError(
                    f"lost the database connection ({what}); work committed before it is kept; "
                    "run the command again when the database is back")
            # Other operational errors: out of resources (53), over a limit (54), ...
            return DatabaseError(f"the database could not complete the operation ({what})")
        cause = cause.__cause__ or cause.__context__
    return None


def _first_line(exc: BaseException) -> str:
    """The first non-blank line of an error's text (psycopg adds DETAIL and CONTEXT lines)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "no details")


def _redacted(message: str) -> str:
    from ragtune.tools.database import redact_url

    return redact_url(message)


if __name__ == "__main__":
    sys.exit(main())
