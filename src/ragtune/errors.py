"""Errors ragtune raises on purpose.

Every error a user can cause (bad input, bad configuration, an unreachable database) is a
`RagtuneError` carrying a message written for that user and the exit code the CLI returns for it.
Anything else that escapes is a bug. Messages never hold a password: one that quotes a database URL
or connection string (psycopg's own texts can) has it redacted when the error is made.
"""

from __future__ import annotations


class RagtuneError(Exception):
    """Base class of the errors ragtune reports to users.

    Attributes:
        exit_code: The process exit code the CLI uses for this error.
    """

    exit_code: int = 1

    def __init__(self, *args: object) -> None:
        from ragtune.tools.database import redact_url

        super().__init__(*(redact_url(a) if isinstance(a, str) else a for a in args))


class ConfigError(RagtuneError):
    """The configuration cannot work (unknown option value, unwritable data directory, ...)."""

    exit_code = 2


class InputError(RagtuneError):
    """An input file, line or argument is unusable; the message names the file and line.

    Batch commands (`ask --questions`, `search --queries`) report such an error on the line of
    the question that caused it, go on, and exit with this code when any line failed.
    """

    exit_code = 3


class FilterError(InputError):
    """A metadata filter uses an unknown operator or an invalid shape."""


class DatabaseError(RagtuneError):
    """The database cannot be reached, went away mid-run, or refused an operation.

    The CLI also reports psycopg's `OperationalError` and `InterfaceError` (a terminated backend,
    a server shut down) and pool timeouts with this code.
    """

    exit_code = 4


class DimensionMismatchError(RagtuneError):
    """A collection was created with another embedding model or dimension than the one in use."""

    exit_code = 5


class AdapterError(RagtuneError):
    """An adapter is unknown, corrupt, or was trained on other base weights than the ones loaded."""

    exit_code = 6
