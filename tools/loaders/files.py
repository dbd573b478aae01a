"""Low-level file access for the loaders.

Owns the known extensions, folder walking, the size, emptiness and binary checks made before a
file is read, and strict UTF-8 decoding that names the offset of the first bad byte.
"""

from __future__ import annotations

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
    """Open a file for binary reading, turning OS errors into an `InputError`."""
    try:
        return path.open("rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror or exc}") from None


def walk_folder(folder: Path) -> Iterator[Path]:
    """Yield the resolved ingestible files under a folder, sorted, skipping hidden entries.

    Symlinked folders are not followed, so a link loop cannot recurse forever.
    """
    try:
        entries = sorted(folder.iterdir(), key=lambda entry: entry.name)
    except OSError as exc:
        raise InputError(f"{folder}: cannot list folder: {exc.strerror or exc}") from None
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
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
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
