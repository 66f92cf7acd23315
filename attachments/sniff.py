"""What a file is, from its first bytes (never from its name)."""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable
from dataclasses import dataclass

# Enough for every signature below and for a PDF header after leading junk (PDF readers look
# for `%PDF-` in the first 1024 bytes).
HEAD_BYTES = 1024

IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}

# Text files keep a content type by their extension (for the download); anything else is plain text.
TEXT_TYPES = {
    "md": "text/markdown",
    "markdown": "text/markdown",
    "csv": "text/csv",
    "json": "application/json",
}

# Kinds we refuse, named so the reason helps the user.
_KNOWN_OTHERS = [
    (b"MZ", "a Windows program"),
    (b"\x7fELF", "a program"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\xd0\xcf\x11\xe0", "an old Office document"),
    (b"\x00\x00\x01\x00", "an icon"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
]


@dataclass(frozen=True)
class Sniffed:
    """The kind (`image`, `pdf`, `text`) and content type a file's bytes say it has."""

    kind: str
    content_type: str
    image_format: str = ""  # Pillow's name, for images


class Refused(Exception):
    """A file the site does not take, with the reason shown to the user."""


def sniff_head(head: bytes) -> Sniffed | None:
    """The image or PDF these first bytes start; None when they may be text (to be checked whole)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("image", "image/png", "PNG")
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("image", "image/jpeg", "JPEG")
    if head.startswith((b"GIF87a", b"GIF89a")):
        return Sniffed("image", "image/gif", "GIF")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Sniffed("image", "image/webp", "WEBP")
    if b"%PDF-" in head[:HEAD_BYTES]:
        return Sniffed("pdf", "application/pdf")
    for magic, what in _KNOWN_OTHERS:
        if head.startswith(magic):
            raise Refused(f"This file is {what}. Attach images (PNG, JPEG, WebP, GIF), PDFs or text files.")
    return None


def check_text(chunks: Iterable[bytes]) -> None:
    """Raise Refused unless the whole file is UTF-8 text (a BOM allowed) without NUL or binary control bytes."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    try:
        for chunk in chunks:
            text = decoder.decode(chunk)
            if _binary(text):
                raise Refused(_NOT_TEXT)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise Refused(_NOT_TEXT) from None


_NOT_TEXT = "This file is not an image, a PDF or UTF-8 text. Attach images (PNG, JPEG, WebP, GIF), PDFs or text files."
# Control characters other than whitespace and ESC (terminal colours in logs): binary data.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")


def _binary(text: str) -> bool:
    return _CONTROL.search(text) is not None


def text_content_type(name: str) -> str:
    """The content type a text file is stored with, from its extension (it is text whatever the name)."""
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return TEXT_TYPES.get(extension, "text/plain")
