"""Checks an upload is what its bytes say, and prepares it: images decoded (EXIF GPS removed), PDFs' text.

Pillow and pdfium are imported when an image or a PDF is prepared, not with the views that import
this module: a process that never takes an upload does without them.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.uploadedfile import UploadedFile

from conversations import images
from conversations.context import estimate_tokens, fenced

from .sniff import HEAD_BYTES, Refused, Sniffed, check_text, sniff_head, text_content_type

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

GPS_IFD = 0x8825  # the EXIF tag that points at the GPS data
# Characters of a PDF's text kept for models that read it as text (about 250k tokens).
PDF_TEXT_LIMIT = 1_000_000


@dataclass
class Prepared:
    """An upload ready to store: what it is, and the bytes to store (the upload itself unless re-encoded)."""

    kind: str
    content_type: str
    content: File
    rendition: File | None = None  # an image larger than the providers read: the copy requests use
    width: int | None = None
    height: int | None = None
    pages: int | None = None
    text: str = ""
    tokens: int = 0  # estimated tokens of the text a model reads (text files, PDFs' text)


def prepare(upload: UploadedFile) -> Prepared:
    """Recognise and check `upload` by content; raise Refused with a reason for anything else."""
    upload.seek(0)
    head = upload.read(HEAD_BYTES)
    upload.seek(0)
    if not head:
        raise Refused("The file is empty.")
    sniffed = sniff_head(head)
    if sniffed is None:
        check_text(_chunks(upload))
        return Prepared(
            kind="text",
            content_type=text_content_type(upload.name or ""),
            content=upload,
            tokens=_text_tokens(upload),
        )
    if sniffed.kind == "image":
        return _image(upload, sniffed)
    return _pdf(upload)


def _chunks(upload: UploadedFile) -> Iterator[bytes]:
    upload.seek(0)
    yield from upload.chunks()
    upload.seek(0)


def _text_tokens(upload: UploadedFile) -> int:
    """Tokens of the file's text, a chunk at a time (never the whole file in memory)."""
    total = 0
    tail = b""
    for chunk in _chunks(upload):
        data = tail + chunk
        # Cut at the last newline so a multi-byte character is never split.
        cut = data.rfind(b"\n") + 1 or len(data)
        total += estimate_tokens(data[:cut].decode("utf-8", "ignore"))
        tail = data[cut:]
    return total + estimate_tokens(tail.decode("utf-8", "ignore"))


def _image(upload: UploadedFile, sniffed: Sniffed) -> Prepared:
    """Decode the whole image (a truncated or disguised file fails here); re-encode it without GPS if it has any."""
    from PIL import Image, UnidentifiedImageError

    limit = settings.CHAT_MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(upload, formats=[sniffed.image_format]) as image:
                width, height = image.size
                if width * height > limit:
                    raise Refused(f"That image is {width}×{height} pixels; the limit is {limit:,} pixels.")
                image.load()
                exif = image.getexif()
                content: File = upload
                if GPS_IFD in exif:
                    content = ContentFile(_without_gps(image, exif, sniffed.image_format), name=upload.name)
                scaled = images.rendition(image)
                rendition = ContentFile(scaled, name=upload.name) if scaled is not None else None
    except Refused:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError, Warning) as exc:
        log.info("refused an image: %s", exc)
        raise Refused(f"This file claims to be a {sniffed.image_format} image but cannot be read as one.") from None
    upload.seek(0)
    return Prepared(
        kind="image",
        content_type=sniffed.content_type,
        content=content,
        rendition=rendition,
        width=width,
        height=height,
    )


def _without_gps(image: Image.Image, exif: Image.Exif, image_format: str) -> bytes:
    """The image re-encoded with its EXIF minus the GPS block (orientation and the rest kept)."""
    del exif[GPS_IFD]
    out = io.BytesIO()
    options: dict[str, object] = {"exif": exif.tobytes()}
    if image.info.get("icc_profile"):
        options["icc_profile"] = image.info["icc_profile"]
    if image_format == "JPEG":
        options.update(quality="keep", subsampling="keep")
    elif image_format == "WEBP":
        options.update(quality=90)
    if getattr(image, "is_animated", False):
        options["save_all"] = True
    image.save(out, format=image_format, **options)
    return out.getvalue()


def _pdf(upload: UploadedFile) -> Prepared:
    """Open the PDF with pdfium and keep its text (for models that read PDFs as text)."""
    import pypdfium2

    path = getattr(upload, "temporary_file_path", None)
    source: str | bytes = path() if path else upload.read()
    upload.seek(0)
    try:
        document = pypdfium2.PdfDocument(source)
    except pypdfium2.PdfiumError as exc:
        reason = "it is password-protected" if "password" in str(exc).lower() else "it cannot be read"
        raise Refused(f"This PDF cannot be used: {reason}.") from None
    try:
        pages = len(document)
        parts: list[str] = []
        length = 0
        for index in range(pages):
            page = document[index]
            textpage = page.get_textpage()
            text = textpage.get_text_range().replace("\r\n", "\n")
            textpage.close()
            page.close()
            parts.append(text)
            length += len(text)
            if length > PDF_TEXT_LIMIT:
                break
    except pypdfium2.PdfiumError:
        raise Refused("This PDF cannot be used: it cannot be read.") from None
    finally:
        document.close()
    text = "\n\n".join(p.strip() for p in parts)[:PDF_TEXT_LIMIT]
    return Prepared(
        kind="pdf",
        content_type="application/pdf",
        content=upload,
        pages=pages,
        text=text,
        tokens=estimate_tokens(fenced(upload.name or "document.pdf", text)),
    )
