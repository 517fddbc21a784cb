"""Text extraction: plain, Markdown, HTML, PDF; clear errors for what cannot be read."""

from __future__ import annotations

import pytest

from inference.rag.extract import ExtractionError, content_type_for, extract_text


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with a line of Helvetica text (built by hand: no PDF writer needed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def test_plain_and_markdown() -> None:
    assert extract_text(b"Hello\r\n\r\n\r\nworld  ", "text/plain") == "Hello\n\nworld"
    assert "# Title" in extract_text(b"# Title\n\nBody text.", "text/markdown")


def test_html_keeps_text_drops_scripts_and_styles() -> None:
    html = (
        b"<html><head><title>T</title><style>p{}</style></head><body><h1>Rivers</h1>"
        b"<script>alert(1)</script><p>Water flows downhill.</p></body></html>"
    )
    text = extract_text(html, "text/html")
    assert "Rivers" in text and "Water flows downhill." in text
    assert "alert" not in text and "p{}" not in text


def test_pdf() -> None:
    assert "Glass beads from Varnholt" in extract_text(
        minimal_pdf("Glass beads from Varnholt"), "application/pdf"
    )


@pytest.mark.parametrize(
    ("raw", "content_type", "message"),
    [
        (b"", "text/plain", "no text"),
        (b"   \n\n ", "text/markdown", "no text"),
        (b"\x00\x01\x02binary", "text/plain", "binary"),
        (b"\xff\xfe\xfa\xfb" * 3 + b"\xc3", "text/plain", "UTF-8"),
        (b"%PDF-1.4 this is not really a pdf", "application/pdf", "PDF"),
        (b"<html><body><script>x()</script></body></html>", "text/html", "no text"),
    ],
)
def test_unreadable_documents_give_clear_errors(raw: bytes, content_type: str, message: str) -> None:
    with pytest.raises(ExtractionError, match=message):
        extract_text(raw, content_type)


def test_content_type_from_name_or_declared() -> None:
    assert content_type_for("notes.md", None) == "text/markdown"
    assert content_type_for("page.HTML", "application/octet-stream") == "text/html"
    assert content_type_for("x", "text/plain; charset=utf-8") == "text/plain"
    with pytest.raises(ExtractionError, match="Unsupported"):
        content_type_for("sheet.xlsx", "application/vnd.ms-excel")
