"""Read documents into sections: text, Markdown, HTML, JSONL and PDF, each split where its structure is.

A section is a run of text under one heading path ("Install > On Linux"), a JSONL record, or a PDF
page; chunks never cross a section boundary (chunking.py). Every reading problem is one line that
names the file: an unreadable document is the user's to fix, not a traceback.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from hone.errors import UserError

SUFFIXES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".rst": "text",
            ".html": "html", ".htm": "html", ".jsonl": "jsonl", ".pdf": "pdf"}
JSONL_TEXT_FIELDS = ("text", "content", "body", "answer", "output")   # the first string one is the document
_ATX = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


class DocumentError(UserError):
    """A document cannot be read (missing, not text, a broken PDF, an unknown kind)."""


@dataclass(frozen=True)
class Section:
    source: str      # the document's name, as chunk ids show it ("faq.md", "faq.jsonl:17")
    title: str       # heading path, record title or page ("Install > On Linux"); "" when none
    text: str


def find_documents(paths: list[Path]) -> list[Path]:
    """The files to read: each file given, and every file of a known kind under each folder (sorted)."""
    found: list[Path] = []
    for path in paths:
        path = Path(path).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file():
            found.append(path)
        else:
            raise DocumentError("no such file or folder", file=str(path))
    if not found:
        raise DocumentError(f"no documents of a known kind ({', '.join(sorted(set(SUFFIXES)))}) under "
                            f"{', '.join(str(p) for p in paths)}")
    return found


def read_sections(path: Path, name: str) -> list[Section]:
    """The sections of one document; `name` is how chunk ids refer to it."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DocumentError(f"unknown document kind {path.suffix or '(no suffix)'!r}; hone reads "
                            f"{', '.join(sorted(SUFFIXES))}", file=str(path))
    if kind == "pdf":
        return _pdf_sections(path, name)
    text = _read_text(path)
    if kind == "markdown":
        return _markdown_sections(text, name)
    if kind == "html":
        return _html_sections(text, name)
    if kind == "jsonl":
        return _jsonl_sections(text, path, name)
    return [Section(name, "", text)]


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DocumentError(f"cannot read it: {exc.strerror or exc}", file=str(path)) from None
    if b"\0" in raw[:8192]:
        raise DocumentError("looks binary (NUL bytes), not a text document; convert it to text, Markdown, "
                            "HTML or PDF first", file=str(path))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"not UTF-8 text (invalid byte at offset {exc.start}); re-encode it as UTF-8",
                            file=str(path)) from None


def _markdown_sections(text: str, name: str) -> list[Section]:
    """Split at ATX headings (outside code fences); a section's title is its heading path."""
    sections: list[Section] = []
    trail: list[tuple[int, str]] = []   # (level, heading) of the current path
    lines: list[str] = []
    fenced = False

    def close() -> None:
        body = "\n".join(lines).strip()
        if body:
            sections.append(Section(name, " > ".join(h for _l, h in trail), body))
        lines.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        heading = None if fenced else _ATX.match(line)
        if heading:
            close()
            level = len(heading[1])
            trail = [(lv, h) for lv, h in trail if lv < level] + [(level, heading[2].strip())]
        else:
            lines.append(line)
    close()
    return sections


class _HTMLText(HTMLParser):
    """Visible text of an HTML page, cut into sections at h1-h6 (script, style and head skipped)."""
    SKIP = {"script", "style", "head", "noscript", "template"}
    BLOCKS = {"p", "div", "li", "br", "tr", "section", "article", "pre", "blockquote", "dd", "dt", "table"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections: list[tuple[list[tuple[int, str]], list[str]]] = [([], [])]
        self.skipping = 0
        self.heading: list[str] | None = None
        self.level = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.heading, self.level = [], int(tag[1])
        elif tag in self.BLOCKS:
            self.sections[-1][1].append("\n\n" if tag == "p" else "\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif self.heading is not None and re.fullmatch(r"h[1-6]", tag):
            title = " ".join("".join(self.heading).split())
            trail = [(lv, h) for lv, h in self.sections[-1][0] if lv < self.level] + [(self.level, title)]
            self.sections.append((trail, []))
            self.heading = None
        elif tag in self.BLOCKS:
            self.sections[-1][1].append("\n\n" if tag == "p" else "\n")

    def handle_data(self, data):
        if self.skipping:
            return
        (self.heading if self.heading is not None else self.sections[-1][1]).append(data)


def _html_sections(text: str, name: str) -> list[Section]:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    out = []
    for trail, parts in parser.sections:
        body = re.sub(r"\n\s*\n\s*", "\n\n", re.sub(r"[ \t\r\f\v]+", " ", "".join(parts))).strip()
        if body:
            out.append(Section(name, " > ".join(h for _l, h in trail), body))
    return out


def _jsonl_sections(text: str, path: Path, name: str) -> list[Section]:
    """One section per record: its first text field, titled by `title` if it has one; named by `id` or line."""
    sections = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DocumentError(f"invalid JSON ({exc.msg})", file=str(path), line=number) from None
        body = next((record[k] for k in JSONL_TEXT_FIELDS if isinstance(record, dict)
                     and isinstance(record.get(k), str)), None)
        if body is None:
            raise DocumentError(f"no text field; a knowledge-base record needs one of {', '.join(JSONL_TEXT_FIELDS)}",
                                file=str(path), line=number)
        key = record.get("id", number)
        title = record.get("title")
        sections.append(Section(f"{name}:{key}", title if isinstance(title, str) else "", body.strip()))
    return [s for s in sections if s.text]


def _pdf_sections(path: Path, name: str) -> list[Section]:
    """One section per page, through pypdf (the `pdf` extra)."""
    try:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError:
        raise DocumentError("reading PDF needs pypdf: pip install 'hone[pdf]'", file=str(path)) from None
    try:
        reader = PdfReader(path)
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, OSError, ValueError, KeyError) as exc:
        raise DocumentError(f"not a readable PDF ({type(exc).__name__}: {exc})", file=str(path)) from None
    return [Section(name, f"page {i}", text.strip()) for i, text in enumerate(pages, 1) if text.strip()]
