"""Text out of uploaded files: plain text, Markdown, HTML (BeautifulSoup) and PDF (pypdf).

Pure functions, no Django. Every failure is an `ExtractionError` with a message meant for the
document's owner (it is shown on the document), never a crash of the ingestion worker.
"""

from __future__ import annotations

import io
import re

SUPPORTED = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
}
_BY_SUFFIX = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}
MAX_BYTES = 20 * 1024 * 1024


class ExtractionError(ValueError):
    pass


def content_type_for(name: str, declared: str | None) -> str:
    """The declared type if we know it, else one guessed from the file name."""
    declared = (declared or "").split(";")[0].strip().lower()
    if declared in SUPPORTED:
        return declared
    for suffix, content_type in _BY_SUFFIX.items():
        if name.lower().endswith(suffix):
            return content_type
    if declared in ("", "application/octet-stream"):
        return "text/plain"
    raise ExtractionError(f"Unsupported content type {declared!r}: upload plain text, Markdown, HTML or PDF.")


def _decode(raw: bytes) -> str:
    if b"\x00" in raw[:4096]:
        raise ExtractionError("The file looks binary, not text (it contains NUL bytes).")
    for encoding in ("utf-8-sig", "utf-16"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ExtractionError("The file is not valid UTF-8 text.")


def _html_text(markup: str) -> str:
    # lazy: bs4 loads with the first HTML upload, not in every process that imports this
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(markup, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    return soup.get_text("\n")


def _pdf_text(raw: bytes) -> str:
    # lazy: pypdf loads with the first PDF upload, not in every process that imports this
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError  # lazy, as above

    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted:
            raise ExtractionError("The PDF is encrypted.")
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except ExtractionError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ExtractionError(f"The PDF could not be read: {exc}") from exc


def normalize(text: str) -> str:
    text = text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t\f\v]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def extract_text(raw: bytes, content_type: str) -> str:
    if len(raw) > MAX_BYTES:
        raise ExtractionError(f"The file is too large ({len(raw)} bytes; the limit is {MAX_BYTES}).")
    kind = SUPPORTED.get(content_type)
    if kind is None:
        raise ExtractionError(f"Unsupported content type {content_type!r}.")
    if kind == "pdf":
        text = _pdf_text(raw)
    else:
        text = _decode(raw)
        if kind == "html":
            text = _html_text(text)
    text = normalize(text)
    if not text:
        raise ExtractionError("The document contains no text.")
    return text
