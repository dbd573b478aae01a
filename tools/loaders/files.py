"""Low-level file access for the loaders.

Owns the known extensions, folder walking, the size, emptiness and binary checks made before a
file is read, and strict UTF-8 decoding that names the offset of the first bad byte.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ragtune.errors import InputError

TEXT_EXTENSIONS = frozenset({".txt", ".md", ".markdown", ".pdf", ".html", ".htm"})
JSON_EXTENSIONS = frozenset({".jsonl", ".json"})
KNOWN_EXTENSIONS = TEXT_EXTENSIONS | JSON_EXTENSIONS
SNIFF_BYTES = 8192
"""How much of a file's head is searched for NUL bytes, the mark of a binary file."""
UTF8_BOM = b"\xef\xbb\xbf"


def open_binary(path: Path) -> BinaryIO:
    """Open a regular file for binary reading, or raise an `InputError` saying why it cannot be.

    The file is opened without blocking and checked before anything is read: a FIFO would block
    the open (and the read) until a writer comes, and a device such as /dev/zero never ends.

    Raises:
        InputError: ``cannot read <path>: permission denied`` (no such file, not a regular
            file (a FIFO), ...).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {describe_os_error(exc)}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(f"cannot read {path}: not a regular file ({describe_mode(mode)})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_readable(path: str | os.PathLike[str]) -> Path:
    """Return `path` once it is proven to be a regular file this process can open.

    Raises:
        InputError: Saying why not, as `open_binary` does.
    """
    file = Path(path)
    open_binary(file).close()
    return file


def describe_os_error(exc: OSError) -> str:
    """Return a short lower-case reason for an OS error on a path (``permission denied``)."""
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "not a regular file (a directory)"
    return (exc.strerror or str(exc)).lower()


def describe_mode(mode: int) -> str:
    """Name the kind of file a `st_mode` describes ("a directory", "a FIFO", ...)."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a file")


def walk_folder(folder: Path) -> Iterator[Path]:
    """Yield the resolved ingestible files under a folder, sorted, skipping hidden entries.

    Symlinked folders are not followed, so a link loop cannot recurse forever.
    """
    try:
        entries = sorted(folder.iterdir(), key=lambda entry: entry.name)
    except OSError as exc:
        raise InputError(f"cannot read folder {folder}: {describe_os_error(exc)}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and not entry.is_symlink():
            yield from walk_folder(entry)
        elif entry.is_file() and entry.suffix.lower() in KNOWN_EXTENSIONS:
            yield entry.resolve()


def check_file(path: Path, max_bytes: int) -> None:
    """Reject a file that is too large, empty, or (unless a PDF) binary, before reading it.

    Raises:
        InputError: Naming the file and what is wrong with it.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read {path}: {describe_os_error(exc)}") from None
    if size > max_bytes:
        raise InputError(
            f"{path}: file is {size:,} bytes, over the limit of {max_bytes:,} bytes "
            "(raise max_file_bytes to read it)"
        )
    if size == 0:
        raise InputError(f"{path}: file is empty")
    if path.suffix.lower() == ".pdf":
        return
    with open_binary(path) as handle:
        head = handle.read(SNIFF_BYTES)
    nul = head.find(b"\0")
    if nul >= 0:
        raise InputError(f"{path}: binary file (NUL byte at offset {nul})")


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """Read a whole file, refusing one that grew past ``max_bytes`` since it was checked."""
    with open_binary(path) as handle:
        raw = handle.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise InputError(f"{path}: file is over the limit of {max_bytes:,} bytes")
    return raw


def decode_utf8(path: Path, raw: bytes) -> str:
    """Decode UTF-8 strictly, dropping a leading byte-order mark.

    Raises:
        InputError: Naming the byte offset of the first invalid byte.
    """
    bom = len(UTF8_BOM) if raw.startswith(UTF8_BOM) else 0
    try:
        return raw[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: not valid UTF-8 (byte offset {bom + exc.start}); re-save it as UTF-8"
        ) from None
