"""Tests of `ragtune.tools.loaders`: every input format and every kind of bad input."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from ragtune.errors import InputError
from ragtune.tools.loaders import Format, LoadStats, SourceDocument, detect_format, iter_documents

DATA_DIR = Path(
    os.environ.get("RAGTUNE_DATA_DIR")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)


def make_pdf(pages: list[str]) -> bytes:
    """Build a minimal valid PDF with one Helvetica text line per page."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b"", b""]
    objects[2] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (len(objects))
        )
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return path


def load(*paths: Path, **kwargs: Any) -> list[SourceDocument]:
    return list(iter_documents(list(paths), **kwargs))


def hotpot_question(*paragraphs: tuple[str, list[str]]) -> dict[str, Any]:
    return {"_id": "q", "question": "?", "context": [[title, s] for title, s in paragraphs]}


def musique_question(*paragraphs: tuple[str, str]) -> dict[str, Any]:
    items = [
        {"idx": n, "title": title, "paragraph_text": text, "is_supporting": False}
        for n, (title, text) in enumerate(paragraphs)
    ]
    return {"id": "2hop__1_2", "paragraphs": items}


# --- text, Markdown, HTML, PDF -------------------------------------------------------------


def test_txt_file_becomes_one_document_keyed_by_resolved_path(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("Hello\nworld\n", encoding="utf-8")

    [doc] = load(tmp_path / "." / "notes.txt")

    assert doc.source == str(path.resolve())
    assert doc.text == "Hello\nworld\n"
    assert doc.title is None and doc.doc_id is None
    assert doc.metadata == {
        "source": str(path.resolve()),
        "format": "text",
        "file_name": "notes.txt",
        "file_type": "txt",
    }
    json.dumps(doc.metadata)


def test_markdown_title_is_first_heading_and_bom_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "guide.md"
    path.write_bytes("\ufeffintro\n# The Guide\n## Part\nbody é\n".encode())

    [doc] = load(path)

    assert doc.title == "The Guide"
    assert doc.text.startswith("intro")
    assert doc.metadata["file_type"] == "markdown"


def test_html_keeps_visible_text_and_title(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text(
        "<html><head><title> My Page </title><style>p {color: red}</style></head>"
        "<body><h1>Heading</h1><script>var x = 1;</script><p>First   para.</p>"
        "<p>Second <b>bold</b> para.</p></body></html>",
        encoding="utf-8",
    )

    [doc] = load(path)

    assert doc.title == "My Page"
    assert "Heading" in doc.text and "First   para." in doc.text and "bold" in doc.text
    assert "var x" not in doc.text and "color" not in doc.text and "My Page" not in doc.text
    assert doc.metadata["file_type"] == "html"


def test_pdf_pages_are_joined_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "paper.pdf"
    path.write_bytes(make_pdf(["Hello page one", "Second page here"]))

    [doc] = load(path)

    assert doc.text == "Hello page one\n\nSecond page here"
    assert doc.metadata["page_count"] == 2
    assert doc.metadata["file_type"] == "pdf"
    assert doc.metadata["source"] == doc.source == str(path.resolve())
    assert "page" not in doc.metadata and "total_pages" not in doc.metadata
    json.dumps(doc.metadata)


def test_pdf_without_text_is_an_error(tmp_path: Path) -> None:
    from pypdf import PdfWriter

    path = tmp_path / "scan.pdf"
    writer = PdfWriter()
    writer.add_blank_page(width=100, height=100)
    writer.write(path)

    with pytest.raises(InputError, match=r"scan\.pdf: PDF has no extractable text"):
        load(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"just text, no header", "not a PDF"), (b"%PDF-1.4\ngarbage", "cannot read PDF")],
)
def test_damaged_pdf_is_an_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken.pdf"
    path.write_bytes(content)

    with pytest.raises(InputError, match=rf"broken\.pdf: {message}"):
        load(path)


def test_explicit_text_format_reads_unknown_extensions(tmp_path: Path) -> None:
    path = tmp_path / "run.log"
    path.write_text("line\n", encoding="utf-8")

    with pytest.raises(InputError, match=r"run\.log: unsupported file type '\.log'"):
        load(path)
    assert [doc.text for doc in load(path, fmt="text")] == ["line\n"]


# --- folders and paths ---------------------------------------------------------------------


def test_folder_is_walked_sorted_skipping_hidden_and_unknown_files(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "b" / "z.txt").write_text("bz", encoding="utf-8")
    (tmp_path / "b" / "a.md").write_text("ba", encoding="utf-8")
    (tmp_path / "a.TXT").write_text("a", encoding="utf-8")
    (tmp_path / "c.htm").write_text("<p>c</p>", encoding="utf-8")
    (tmp_path / ".secret.txt").write_text("no", encoding="utf-8")
    (tmp_path / ".hidden" / "x.txt").write_text("no", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    write_jsonl(tmp_path / "d.jsonl", [{"text": "d"}])

    docs = load(tmp_path, tmp_path / "a.TXT")  # a file named twice is read once

    assert [doc.text.strip() for doc in docs] == ["a", "ba", "bz", "c", "d"]


def test_folder_without_ingestible_files_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.csv").write_text("a,b\n", encoding="utf-8")
    (tmp_path / "other" / ".notes.txt").write_text("hidden\n", encoding="utf-8")

    for folder in ("empty", "other"):
        with pytest.raises(InputError, match=rf"{folder}: folder has no ingestible files"):
            load(tmp_path / folder, skip_bad=True)


def test_missing_path_raises_or_is_skipped(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("ok", encoding="utf-8")
    missing = tmp_path / "nope.txt"

    with pytest.raises(InputError, match=r"nope\.txt: no such file or folder"):
        load(good, missing)

    skipped: list[str] = []
    stats = LoadStats()
    docs = load(missing, good, skip_bad=True, on_skip=skipped.append, stats=stats)
    assert [doc.text for doc in docs] == ["ok"]
    assert len(skipped) == 1 and "nope.txt: no such file or folder" in skipped[0]
    assert (stats.files, stats.documents, stats.skipped) == (1, 1, 1)


def test_unknown_format_argument_is_refused(tmp_path: Path) -> None:
    unknown: Any = "csv"
    with pytest.raises(InputError, match="unknown format 'csv'"):
        load(tmp_path, fmt=unknown)


# --- bad files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", b"", r"file is empty"),
        ("blank.md", b"  \n\t\n", r"file has no text \(empty or only whitespace\)"),
        ("blank.html", b"<html><body>  </body></html>", r"file has no text"),
        ("blank.jsonl", b"\n  \n\n", r"file is empty \(only whitespace\)"),
        ("blank.json", b"   \n", r"file is empty \(only whitespace\)"),
        ("nul.txt", b"text\0more", r"binary file \(NUL byte at offset 4\)"),
        ("nul.jsonl", b'{"text": "a"}\n\0\0', r"binary file \(NUL byte at offset 14\)"),
        ("ctrl.txt", bytes(range(1, 9)) * 20, r"not a text file"),
        ("latin1.txt", "caf\u00e9".encode("latin-1"), r"not valid UTF-8 \(byte offset 3\)"),
        ("bom.html", b"\xef\xbb\xbfab\xff", r"not valid UTF-8 \(byte offset 5\)"),
        ("list.json", b"[]", r"file holds an empty JSON list"),
        ("broken.json", b'[{"text": "a"', r"malformed JSON"),
        ("shape.json", b'[{"question": "?"}]', r"cannot tell the format"),
        ("scalar.jsonl", b"42\n", r"cannot tell the format"),
    ],
)
def test_bad_file_is_an_error_naming_it(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    with pytest.raises(InputError, match=rf"{path.name}: {message}") as caught:
        load(path)
    assert str(tmp_path) in str(caught.value)

    skipped: list[str] = []
    assert load(path, skip_bad=True, on_skip=skipped.append) == []
    assert len(skipped) == 1 and name in skipped[0]


def test_oversized_file_is_refused_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.jsonl"
    write_jsonl(path, [{"text": "x" * 100}])
    size = path.stat().st_size

    def refuse_open(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the file was opened")

    monkeypatch.setattr(Path, "open", refuse_open)
    with pytest.raises(InputError, match=rf"big\.jsonl: file is {size} bytes, over .* 50 bytes"):
        load(path, max_file_bytes=50)


# --- JSONL ---------------------------------------------------------------------------------


def test_jsonl_records_sources_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text(
        '{"id": "a1", "title": "A", "text": "alpha", "metadata": {"lang": "en", "n": 1}}\n'
        "\n"
        '{"text": "beta"}\n'
        '{"id": 7, "text": "gamma", "title": null, "metadata": null}\n',
        encoding="utf-8",
    )

    docs = load(path)

    assert [(d.source, d.doc_id, d.title, d.text) for d in docs] == [
        ("jsonl:a1", "a1", "A", "alpha"),
        (f"{path.resolve()}#L3", None, None, "beta"),
        ("jsonl:7", "7", None, "gamma"),
    ]
    assert docs[0].metadata == {
        "lang": "en",
        "n": 1,
        "source": "jsonl:a1",
        "format": "jsonl",
        "file_name": "docs.jsonl",
        "record": "L1",
    }
    assert detect_format(path) == "jsonl"


def test_json_list_of_records_is_read_as_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "docs.json"
    path.write_text(json.dumps([{"text": "one"}, {"id": "x", "text": "two"}]), encoding="utf-8")

    assert detect_format(path) == "jsonl"
    assert [d.source for d in load(path)] == [f"{path.resolve()}#item1", "jsonl:x"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"text": "a",}', r"malformed JSON: Expecting property name"),
        (b'{"title": "t"}', r'missing "text"'),
        (b'{"text": 3}', r'"text" must be a string, got int'),
        (b'{"text": "  "}', r'"text" is empty'),
        (b'{"text": "a", "metadata": [1]}', r'"metadata" must be a JSON object'),
        (b'{"text": "a", "title": 5}', r'"title" must be a string'),
        (b'{"text": "a", "id": true}', r'"id" must be a string or an integer, got bool'),
        (b'{"text": "a", "id": ""}', r'"id" is empty'),
        (b'{"text": "a", "url": "u"}', r"unknown key\(s\) url"),
        (b'["text"]', r"expected a JSON object, got list"),
        (b'{"text": "caf\xe9"}', r"not valid UTF-8 \(byte offset 43 in the file\)"),
        (b'{"id": "a", "text": "again"}', r"duplicate id 'a' \(first at .*bad\.jsonl:1\)"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path: Path, line: bytes, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"id": "a", "text": "first"}\n\n' + line + b'\n{"text": "last"}\n')

    docs = iter_documents([path])
    assert next(docs).text == "first"  # lines before the bad one were already yielded
    with pytest.raises(InputError, match=rf"bad\.jsonl:3: {message}"):
        next(docs)

    skipped: list[str] = []
    stats = LoadStats()
    kept = load(path, skip_bad=True, on_skip=skipped.append, stats=stats)
    assert [d.text for d in kept] == ["first", "last"]
    assert len(skipped) == 1 and "bad.jsonl:3:" in skipped[0]
    assert (stats.documents, stats.skipped) == (2, 1)


def test_jsonl_is_streamed_not_read_whole(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "many.jsonl", [{"text": f"doc {n}"} for n in range(20000)])

    docs = iter_documents([path])
    assert next(docs).text == "doc 0"
    with path.open("a", encoding="utf-8") as handle:  # unseen by a reader that read it whole
        handle.write(json.dumps({"text": "appended"}) + "\n")
    assert [doc.text for doc in docs][-2:] == ["doc 19999", "appended"]


# --- HotpotQA and MuSiQue ------------------------------------------------------------------


def test_hotpotqa_paragraphs_deduplicated_by_title(tmp_path: Path) -> None:
    first = tmp_path / "a.json"
    first.write_text(
        json.dumps(
            [
                hotpot_question(("Alpha", ["Alpha is one.", " It is first. "]), ("Beta", ["B."])),
                hotpot_question(("Beta", ["B."]), ("Gamma", ["G."])),
            ]
        ),
        encoding="utf-8",
    )
    second = tmp_path / "b.json"
    second.write_text(json.dumps([hotpot_question(("Alpha", ["Other text."]))]), encoding="utf-8")

    stats = LoadStats()
    docs = load(first, second, stats=stats)

    assert detect_format(first) == "hotpotqa"
    assert [(d.source, d.title, d.text) for d in docs] == [
        ("hotpotqa:Alpha", "Alpha", "Alpha is one. It is first."),
        ("hotpotqa:Beta", "Beta", "B."),
        ("hotpotqa:Gamma", "Gamma", "G."),
    ]
    assert docs[0].metadata == {"title": "Alpha", "dataset": "hotpotqa"}
    assert (stats.duplicates, stats.conflicts) == (1, 1)


def test_hotpotqa_questions_may_also_come_as_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "hp.jsonl", [hotpot_question(("T", ["x"]))])

    assert detect_format(path) == "hotpotqa"
    assert [d.source for d in load(path)] == ["hotpotqa:T"]


def test_musique_paragraphs_deduplicated_by_title_and_text(tmp_path: Path) -> None:
    path = tmp_path / "mq.json"
    path.write_text(
        json.dumps(
            [
                musique_question(("Paris", "Capital of France."), ("Paris", "A city in Texas.")),
                musique_question(("Paris", "Capital of France."), ("Rome", " Capital of Italy. ")),
            ]
        ),
        encoding="utf-8",
    )

    stats = LoadStats()
    docs = load(path, stats=stats)

    def sha(text: str) -> str:
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    assert detect_format(path) == "musique"
    assert [(d.source, d.title, d.text) for d in docs] == [
        (f"musique:Paris:{sha('Capital of France.')}", "Paris", "Capital of France."),
        (f"musique:Paris:{sha('A city in Texas.')}", "Paris", "A city in Texas."),
        (f"musique:Rome:{sha('Capital of Italy.')}", "Rome", "Capital of Italy."),
    ]
    assert docs[0].metadata == {"title": "Paris", "dataset": "musique"}
    assert stats.duplicates == 1


@pytest.mark.parametrize(
    ("fmt", "items", "message"),
    [
        ("hotpotqa", [{"context": "nope"}], r'item 2: not a HotpotQA question \(needs a "context"'),
        ("hotpotqa", [{"context": [["T", "s"]]}], r"item 2: context\[1\] is not \[title, \["),
        ("hotpotqa", [{"context": [["T", [" "]]]}], r"item 2: context\[1\] has an empty title"),
        ("musique", [{"paragraphs": {}}], r'item 2: not a MuSiQue question \(needs a "paragraphs"'),
        ("musique", [{"paragraphs": [{"title": "T"}]}], r"item 2: paragraphs\[1\] needs string"),
        (
            "musique",
            [{"paragraphs": [{"title": "", "paragraph_text": "x"}]}],
            r"item 2: paragraphs\[1\] has an empty title",
        ),
    ],
)
def test_bad_dataset_item_is_an_error(
    tmp_path: Path, fmt: Format, items: list[Any], message: str
) -> None:
    good = hotpot_question(("G", ["good"])) if fmt == "hotpotqa" else musique_question(("G", "g"))
    path = tmp_path / "data.json"
    path.write_text(json.dumps([good, *items]), encoding="utf-8")

    with pytest.raises(InputError, match=rf"data\.json {message}"):
        load(path, fmt=fmt)

    skipped: list[str] = []
    assert [d.title for d in load(path, skip_bad=True, on_skip=skipped.append)] == ["G"]
    assert len(skipped) == 1


def test_dataset_file_of_the_wrong_shape_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "obj.json"
    path.write_text(json.dumps({"data": []}), encoding="utf-8")

    with pytest.raises(InputError, match=r"obj\.json: cannot tell the format"):
        load(path)
    with pytest.raises(InputError, match=r"obj\.json:1: not a HotpotQA question"):
        load(path, fmt="hotpotqa")


# --- the real data -------------------------------------------------------------------------


def test_real_hotpotqa_dev_tune_yields_one_document_per_distinct_title() -> None:
    path = DATA_DIR / "hotpotqa" / "dev_tune.json"
    if not path.exists():
        pytest.skip(f"{path} is not here; set RAGTUNE_DATA_DIR")
    questions = json.loads(path.read_text(encoding="utf-8"))
    titles = {title for question in questions for title, _ in question["context"]}

    stats = LoadStats()
    docs = load(path, stats=stats)

    assert len(docs) == len(titles)
    assert {d.title for d in docs} == titles
    assert len({d.source for d in docs}) == len(docs)
    assert all(d.text and d.text == d.text.strip() for d in docs)
    assert stats.skipped == 0
