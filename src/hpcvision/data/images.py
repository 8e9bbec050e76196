"""Image bytes for the records: JPEG pass-through from the header, conversion only where needed.

Decoding every image is the slow path, so an RGB JPEG whose header reads cleanly and whose bytes
start with SOI and end with EOI is passed through unchanged. Only CMYK/grayscale/other-mode JPEGs,
other formats under a .JPEG name (ImageNet has a PNG), and JPEGs failing the cheap end check are
decoded; the first three are re-encoded as RGB JPEG, a failing decode skips the image. An image
whose header claims more than MAX_PIXELS is skipped before any decoding.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image

JPEG_QUALITY = 95
SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
# Some JPEGs carry a few padding bytes after EOI; look for it near the end only.
EOI_WINDOW = 64
# The largest image any stage decodes (build, train, evaluate, predict). 100 Mpx is 300 MB of RGB
# bytes and 1.2 GB as float32; a header that claims more is a decompression bomb or a broken file,
# skipped (build) or refused (predict) without being decoded. Documented in docs/data.md.
MAX_PIXELS = 100_000_000


class ImageProblem(ValueError):
    """An image that cannot be used; the message is the reason written to skipped.tsv."""


class TooLarge(ImageProblem):
    """An image whose header claims more than MAX_PIXELS: refused before anything is decoded."""


@dataclass(frozen=True)
class PreparedImage:
    """RGB JPEG bytes ready for a record, their pixel size, and what was done (None = passed through)."""

    jpeg: bytes
    width: int
    height: int
    converted: str | None = None


def ends_cleanly(data: bytes) -> bool:
    """Cheap JPEG integrity check: SOI at the start and an EOI marker in the last bytes."""
    return data.startswith(SOI) and EOI in data[-EOI_WINDOW:]


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG's frame header, or None if the markers don't parse.

    Walks the marker segments up to the first SOFn: a few steps, no decoding (Pillow's open also
    reads every table, about 10x slower, which matters at thousands of images a second).
    """
    if not data.startswith(SOI):
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            if pos + 10 > end:
                return None
            height = (data[pos + 5] << 8) | data[pos + 6]
            width = (data[pos + 7] << 8) | data[pos + 8]
            return width, height, data[pos + 9]
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        pos += 2 + length
    return None


def check_pixels(width: int, height: int) -> None:
    """ImageProblem if an image of this size is above MAX_PIXELS (checked before anything is decoded)."""
    if width * height > MAX_PIXELS:
        raise TooLarge(f"too large: {width}x{height} is more than {MAX_PIXELS:,} pixels")


def check_header_pixels(data: bytes) -> None:
    """TooLarge if the image's header claims more than MAX_PIXELS; nothing is decoded.

    A header that does not parse passes: whoever decodes the image then says what is wrong with it.
    """
    header = jpeg_header(data)
    if header is not None:
        check_pixels(header[0], header[1])
        return
    try:
        size = _open(data).size
    except TooLarge:
        raise
    except ImageProblem:
        return
    check_pixels(*size)


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning etc.: reported via the reason
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's own limit is above ours: too large for us too
        claimed = re.search(r"\((\d+) pixels\)", str(exc))  # "Image size (N pixels) exceeds limit ..."
        size = f"{int(claimed.group(1)):,} pixels" if claimed else "more pixels than Pillow opens, which"
        raise TooLarge(f"too large: {size} is more than {MAX_PIXELS:,} pixels") from None
    except Exception as exc:  # Pillow raises many types for garbage input
        raise ImageProblem(f"not a readable image ({type(exc).__name__}: {_short(exc)})") from None


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]


def _decode(image: Image.Image, what: str) -> None:
    try:
        image.load()
    except Exception as exc:
        raise ImageProblem(f"corrupt {what} ({_short(exc)})") from None


def to_rgb_jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    """Decoded image -> RGB JPEG bytes (CMYK, grayscale, palette and alpha images included)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
    elif image.mode == "I;16" or image.mode == "I":
        rgb = image.point(lambda v: v / 256).convert("L").convert("RGB")
    else:
        rgb = image.convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def prepare_image(data: bytes | None) -> PreparedImage:
    """The record's JPEG for one image file; ImageProblem with the reason if it must be skipped."""
    if not data:
        raise ImageProblem("zero-byte file")
    header = jpeg_header(data)
    if header is not None:
        check_pixels(header[0], header[1])
        if header[2] == 3 and header[0] > 0 and header[1] > 0 and ends_cleanly(data):
            return PreparedImage(data, header[0], header[1])  # the common case: a clean 3-channel JPEG
    image = _open(data)
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageProblem(f"image has no pixels ({width}x{height})")
    check_pixels(width, height)  # from the header Pillow read; nothing is decoded yet
    if image.format == "JPEG" and image.mode == "RGB":
        if not ends_cleanly(data):
            _decode(image, "JPEG")  # Pillow raises "image file is truncated" if it really is
        return PreparedImage(data, width, height)
    what = f"{image.format or 'unknown'} {image.mode}"
    _decode(image, f"{image.format or 'image'}")
    if image.format == "JPEG":
        converted = f"{image.mode} JPEG -> RGB"
    else:
        converted = f"{image.format} named .JPEG -> RGB JPEG"
    try:
        jpeg = to_rgb_jpeg(image)
    except Exception as exc:
        raise ImageProblem(f"cannot convert {what} to RGB JPEG ({_short(exc)})") from None
    return PreparedImage(jpeg, width, height, converted)
