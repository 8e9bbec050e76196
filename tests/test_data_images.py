"""JPEG pass-through and conversions (images.py) and VOC box parsing (annotations.py), on bad inputs too."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from hpcvision.data.annotations import parse_voc
from hpcvision.data.images import ImageProblem, jpeg_header, prepare_image


def _encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _noise(mode: str, size=(41, 29), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "CMYK": 4, "L": 1, "RGBA": 4}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(array[..., 0] if channels == 1 else array, mode=mode)


def _smooth(mode: str, size=(41, 29)) -> Image.Image:
    """Gradients: JPEG re-encoding keeps them close, unlike noise."""
    y, x = np.mgrid[0: size[1], 0: size[0]]
    planes = [(x * 255 // size[0]), (y * 255 // size[1]), ((x + y) * 127 // (size[0] + size[1])), 255 - x * 3]
    channels = len(Image.new(mode, (1, 1)).getbands())
    array = np.stack(planes[:channels], axis=-1).astype(np.uint8)
    return Image.fromarray(array[..., 0] if channels == 1 else array, mode=mode)


def _decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("kwargs", [{}, {"progressive": True}, {"quality": 30, "subsampling": 0},
                                    {"exif": Image.Exif().tobytes()}])
def test_rgb_jpeg_passes_through_unchanged_with_header_size(kwargs):
    data = _encode(_noise("RGB", (123, 77)), **kwargs)
    prepared = prepare_image(data)
    assert prepared.jpeg is data and prepared.converted is None
    assert (prepared.width, prepared.height) == Image.open(io.BytesIO(data)).size == (123, 77)


def test_jpeg_header_agrees_with_pillow_on_many_sizes():
    for seed, size in enumerate([(1, 1), (64, 64), (300, 17), (1024, 3), (257, 513)]):
        for mode in ("RGB", "L", "CMYK"):
            data = _encode(_noise(mode, size, seed))
            width, height, components = jpeg_header(data)
            reference = Image.open(io.BytesIO(data))
            assert (width, height) == reference.size
            assert components == len(reference.getbands())


def test_trailing_bytes_after_eoi_still_pass_through():
    data = _encode(_noise("RGB")) + b"\x00" * 10
    assert prepare_image(data).jpeg is data


@pytest.mark.parametrize("mode", ["CMYK", "L"])
def test_cmyk_and_grayscale_jpegs_become_rgb_jpegs(mode):
    source = _smooth(mode)
    prepared = prepare_image(_encode(source, quality=95))
    image = _decoded(prepared.jpeg)
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", source.size)
    assert mode in prepared.converted
    # same picture: compare with Pillow's own RGB conversion of the decoded source
    reference = np.asarray(_decoded(_encode(source, quality=95)).convert("RGB"), dtype=float)
    assert np.abs(np.asarray(image, dtype=float) - reference).mean() < 3


def test_png_named_jpeg_becomes_rgb_jpeg():
    source = _noise("RGBA")
    prepared = prepare_image(_encode(source, "PNG"))
    image = _decoded(prepared.jpeg)
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", source.size)
    assert "PNG" in prepared.converted


def test_zero_byte_file_is_skipped_with_reason():
    with pytest.raises(ImageProblem, match="zero-byte"):
        prepare_image(b"")


def test_truncated_jpeg_is_skipped_with_reason():
    data = _encode(_noise("RGB", (200, 150)))
    with pytest.raises(ImageProblem, match="corrupt"):
        prepare_image(data[: len(data) // 2])


def test_garbage_named_jpeg_is_skipped_with_reason():
    with pytest.raises(ImageProblem, match="not a readable image"):
        prepare_image(b"this is not an image at all" * 10)
    with pytest.raises(ImageProblem):
        prepare_image(b"\xff\xd8\xff\xe0garbage")


# --- annotations ---------------------------------------------------------------------------------

def _voc(boxes, size=(200, 100)) -> bytes:
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height></size>" if size else ""
    objects = "".join(
        f"<object><name>n1</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bndbox></object>" for b in boxes)
    return f"<annotation>{size_xml}{objects}</annotation>".encode()


def test_boxes_are_relative_to_the_xml_size():
    parsed = parse_voc(_voc([(20, 10, 120, 90), (0, 0, 200, 100)]), 999, 999)
    assert [(b.xmin, b.ymin, b.xmax, b.ymax) for b in parsed.boxes] == \
        [pytest.approx((0.1, 0.1, 0.6, 0.9)), pytest.approx((0, 0, 1, 1))]
    assert parsed.problem is None and parsed.clamped == 0


def test_box_outside_the_image_is_clamped():
    parsed = parse_voc(_voc([(-50, 20, 260, 130)]), 200, 100)
    (box,) = parsed.boxes
    assert (box.xmin, box.ymin, box.xmax, box.ymax) == pytest.approx((0.0, 0.2, 1.0, 1.0))
    assert parsed.clamped == 1


def test_without_size_the_image_size_is_used_and_swapped_corners_fixed():
    (box,) = parse_voc(_voc([(30, 40, 10, 20)], size=None), 40, 80).boxes
    assert (box.xmin, box.ymin, box.xmax, box.ymax) == pytest.approx((0.25, 0.25, 0.75, 0.5))


def test_box_without_area_or_numbers_is_dropped():
    xml = _voc([(10, 10, 10, 50), (300, 10, 400, 50)]).replace(b"</annotation>",
                                                                 b"<object><bndbox><xmin>a</xmin></bndbox></object></annotation>")
    parsed = parse_voc(xml, 200, 100)
    assert parsed.boxes == [] and parsed.dropped == 3


def test_malformed_xml_gives_no_boxes_and_a_reason():
    parsed = parse_voc(b"<annotation><object><bndbox>", 10, 10)
    assert parsed.boxes == [] and parsed.problem.startswith("malformed XML")


def test_entity_expansion_is_refused():
    bomb = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;&x;">]>'
            b"<annotation><size><width>&y;</width></size></annotation>")
    parsed = parse_voc(bomb, 10, 10)
    assert parsed.boxes == [] and parsed.problem.startswith("malformed XML")


def test_external_entities_are_refused_and_a_plain_doctype_still_parses(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("42")
    external = (f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY s SYSTEM "file://{secret}">]>'
                "<annotation><size><width>&s;</width><height>10</height></size></annotation>").encode()
    parsed = parse_voc(external, 10, 10)
    assert parsed.problem and parsed.problem.startswith("malformed XML")
    plain = b'<?xml version="1.0"?><!DOCTYPE annotation>' + _voc([(20, 10, 120, 90)])
    (box,) = parse_voc(plain, 1, 1).boxes
    assert (box.xmin, box.ymax) == pytest.approx((0.1, 0.9))


def _claiming(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0) claims another size; the scan data stays as it was."""
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[sof + 9:]


@pytest.mark.parametrize("mode", ["RGB", "CMYK"])
def test_a_header_above_the_pixel_limit_is_skipped_without_decoding(mode, monkeypatch):
    bomb = _claiming(_encode(_noise(mode)), 65_000, 65_000)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(ImageProblem, match=r"too large: 65000x65000 is more than 100,000,000 pixels"):
        prepare_image(bomb)


def test_a_png_above_the_pixel_limit_is_skipped_without_decoding(monkeypatch):
    """Pillow's path: the size comes from the PNG header; 108 Mpx is under Pillow's own bomb limit."""
    png = _encode(_noise("RGB"), "PNG")
    ihdr = png.index(b"IHDR")
    body = b"IHDR" + (12_000).to_bytes(4, "big") + (9_000).to_bytes(4, "big") + png[ihdr + 12: ihdr + 17]
    png = png[:ihdr] + body + zlib.crc32(body).to_bytes(4, "big") + png[ihdr + 21:]
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(ImageProblem, match=r"too large: 12000x9000 is more than 100,000,000 pixels"):
        prepare_image(png)
    huge = png[:ihdr] + b"IHDR" + (30_000).to_bytes(4, "big") * 2 + png[ihdr + 12:]
    body = huge[ihdr: ihdr + 17]
    huge = huge[: ihdr + 17] + zlib.crc32(body).to_bytes(4, "big") + huge[ihdr + 21:]
    with pytest.raises(ImageProblem, match=r"too large: [0-9,]+ pixels is more than 100,000,000 pixels"):  # Pillow's bomb error
        prepare_image(huge)
