"""The bytes of an image as a provider is sent them: the stored file when it is within the provider's limits,
else a copy scaled to `context.image_sent_size` (made from the upload's stored rendition when there is one).

Pillow is imported where an image is opened: every process imports this module (the reply's history
uses it), and most never open an image (the task worker, a site without uploads: about 2 MB each).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from django.db.models.fields.files import FieldFile

from .context import image_sent_size

if TYPE_CHECKING:
    from PIL import Image

    from .attachment import Attachment

# Largest image a provider takes, in bytes of the file (Anthropic: 5 MB of base64; OpenAI: 20 MB).
MAX_BYTES = {"anthropic": 5 * 1024 * 1024 * 3 // 4, "openai": 20 * 1024 * 1024}
DEFAULT_MAX_BYTES = MAX_BYTES["anthropic"]

ORIENTATION = 0x0112  # the EXIF tag
TURNED = {5, 6, 7, 8}  # orientations that swap width and height

# How a scaled copy is written: in the original's format, except GIF (one frame, as PNG).
FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/png"}
SAVE_OPTIONS: dict[str, dict[str, object]] = {"JPEG": {"quality": 90}, "WEBP": {"quality": 90}, "PNG": {}}


def rendition_size(width: int, height: int) -> tuple[int, int]:
    """The size of the copy kept at upload: the larger of what OpenAI and Anthropic read, so that either
    provider's image is at most one small scaling away from it."""
    return max((image_sent_size(width, height, p) for p in ("openai", "anthropic")), key=lambda s: s[0] * s[1])


def rendition(image: Image.Image) -> bytes | None:
    """At upload: the copy kept for requests (upright, at `rendition_size`) of an image larger than any
    provider reads; None for one that is not."""
    width, height = image.size
    size = rendition_size(width, height)
    if size == (width, height):
        return None
    if _portrait(_upright_size(image)) != _portrait((width, height)):
        size = (size[1], size[0])
    return scaled(image, size, image.format or "PNG")[1]


def scaled(image: Image.Image, size: tuple[int, int], image_format: str) -> tuple[str, bytes]:
    """`image` upright (its EXIF orientation applied) at `size`, encoded: (content type, bytes)."""
    from PIL import Image, ImageOps

    upright = ImageOps.exif_transpose(image)
    if upright.mode not in ("RGB", "RGBA", "L", "LA"):
        upright = upright.convert("RGBA" if upright.has_transparency_data else "RGB")
    if upright.size != size:
        upright = upright.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    target = image_format if image_format in SAVE_OPTIONS else "PNG"
    if target == "JPEG" and upright.mode not in ("RGB", "L"):
        upright = upright.convert("RGB")
    out = io.BytesIO()
    upright.save(out, format=target, **SAVE_OPTIONS[target])
    return FORMATS[target], out.getvalue()


def for_provider(attachment: Attachment, provider: str) -> tuple[str, bytes]:
    """The image of `attachment` as `provider` is sent it: (content type, bytes). The stored file when its
    size is what the provider reads (and it is not too large, or an animated GIF for OpenAI); else scaled."""
    from PIL import Image

    width, height = attachment.width or 0, attachment.height or 0
    size = image_sent_size(width, height, provider)
    limit = MAX_BYTES.get(provider, DEFAULT_MAX_BYTES)
    if size == (width, height) and attachment.size <= limit and not _animated_gif_for_openai(attachment, provider):
        return attachment.content_type, _read(attachment.file)
    # The upload's rendition (upright, and small) when there is one: the original may be 40 megapixels.
    data = _read(attachment.rendition) if attachment.rendition else _read(attachment.file)
    with Image.open(io.BytesIO(data)) as image:
        if _portrait(_upright_size(image)) != _portrait((width, height)):
            size = (size[1], size[0])  # the stored size is before its EXIF orientation turns it
        if attachment.rendition and _upright_size(image) == size and len(data) <= limit:
            return Image.MIME.get(image.format or "", attachment.content_type), data
        content_type, scaled_data = scaled(image, size, image.format or "PNG")
        if len(scaled_data) > limit:  # a picture of noise, say: as a JPEG it fits
            content_type, scaled_data = scaled(image, size, "JPEG")
    return content_type, scaled_data


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """The image's size once its EXIF orientation is applied (without decoding it)."""
    width, height = image.size
    return (height, width) if image.getexif().get(ORIENTATION) in TURNED else (width, height)


def _portrait(size: tuple[int, int]) -> bool:
    return size[0] < size[1]


def _animated_gif_for_openai(attachment: Attachment, provider: str) -> bool:
    """OpenAI takes non-animated GIFs only: an animated one goes as its first frame."""
    if provider != "openai" or attachment.content_type != "image/gif":
        return False
    from PIL import Image

    with attachment.file.open("rb") as handle, Image.open(handle) as image:
        return bool(getattr(image, "is_animated", False))


def _read(field: FieldFile) -> bytes:
    with field.open("rb") as handle:
        return handle.read()
