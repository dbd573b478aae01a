"""Reading one plain-text, Markdown, HTML or PDF file whole into a `SourceDocument`."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ragtune.errors import InputError

from .document import SourceDocument
from .files import SNIFF_BYTES, decode_utf8, open_binary, read_bounded

_FILE_TYPES = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
_PDF_PAGE_KEYS = frozenset({"source", "page", "page_label", "total_pages"})
"""Per-page keys of PyPDFLoader's metadata that describe a page, not the file."""


def read_text_file(path: Path, max_bytes: int) -> SourceDocument:
    """Read and validate a whole file; anything not .pdf/.html/.htm/.md is read as plain text.

    Args:
        path: The resolved file; it becomes the document's ``source``.
        max_bytes: The most bytes to read.

    Returns:
        The document, with ``metadata`` holding ``source``, ``format`` (``"text"``),
        ``file_name``, ``file_type`` and, for a PDF, ``page_count`` and its info fields.

    Raises:
        InputError: If the file is not UTF-8, looks binary, or has no text.
    """
    file_type = _FILE_TYPES.get(path.suffix.lower(), "txt")
    metadata: dict[str, Any] = {
        "source": str(path),
        "format": "text",
        "file_name": path.name,
        "file_type": file_type,
    }
    title: str | None = None
    if file_type == "pdf":
        text, title, info = _read_pdf(path)
        metadata.update(info)
    else:
        text = decode_utf8(path, read_bounded(path, max_bytes))
        if _looks_binary(text):
            raise InputError(f"{path}: not a text file (mostly control characters)")
        if file_type == "html":
            text, title = _html_text(text)
        elif file_type == "markdown":
            title = _markdown_title(text)
    if not text.strip():
        raise InputError(f"{path}: file has no text (empty or only whitespace)")
    return SourceDocument(str(path), text, title, None, metadata)


def _looks_binary(text: str) -> bool:
    """Tell whether text is mostly control characters, as binary data that decoded by luck is."""
    head = text[:SNIFF_BYTES]
    controls = sum(
        1 for char in head if (ord(char) < 32 and char not in "\t\n\r\f\v") or ord(char) == 127
    )
    return controls > 0.1 * len(head)


def _markdown_title(text: str) -> str | None:
    """Return the first level-one ATX heading (``# Title``) of a Markdown text."""
    for line in text.splitlines():
        if line.startswith("# ") and line[2:].strip(" #"):
            return line[2:].strip(" #")
    return None


def _html_text(html: str) -> tuple[str, str | None]:
    """Return the visible text of an HTML page, one block per line, and its ``<title>``."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(strip=True) if soup.title else None
    for tag in soup(["head", "script", "style", "noscript", "template"]):
        tag.decompose()
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    return "\n".join(line for line in lines if line), title or None


def _read_pdf(path: Path) -> tuple[str, str | None, dict[str, Any]]:
    """Return a PDF's text (pages joined by blank lines), its title and JSON-safe info."""
    with open_binary(path) as handle:
        if b"%PDF-" not in handle.read(1024):
            raise InputError(f"{path}: not a PDF file (no %PDF- header)")
    with warnings.catch_warnings():
        # langchain-community warns about its own sunset on import; users cannot act on it.
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_community.document_loaders import PyPDFLoader
    try:
        pages = PyPDFLoader(str(path)).load()
    except Exception as exc:  # pypdf raises many unrelated types for damaged files
        raise InputError(f"{path}: cannot read PDF: {exc}") from None
    texts = [page.page_content.strip() for page in pages]
    text = "\n\n".join(page for page in texts if page)
    if not text:
        raise InputError(f"{path}: PDF has no extractable text (scanned? run OCR first)")
    info = {
        key: value
        for key, value in pages[0].metadata.items()
        if key not in _PDF_PAGE_KEYS and isinstance(value, str | int | float | bool) and value != ""
    }
    info["page_count"] = len(pages)
    title = info.get("title")
    return text, title if isinstance(title, str) and title.strip() else None, info
