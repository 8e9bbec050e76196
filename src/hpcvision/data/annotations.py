"""PASCAL-VOC bounding boxes (ImageNet's Annotation/<wnid>/<name>.xml) as relative, clamped boxes.

Entity-expansion and external-entity tricks need a DTD. An XML that declares one is parsed with
defusedxml, which refuses entity declarations; the rest (every real annotation) cannot declare
entities and goes through the C parser of xml.etree, ~5x faster than defusedxml's Python-level
builder over ImageNet's 500,000 annotations. A malformed XML keeps the image without boxes and says why.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from hpcvision.data.records import Box

# Where entities could be declared: a DOCTYPE (any case, as expat is strict but cheap to over-match).
_DECLARES_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


@dataclass
class ParsedBoxes:
    """Boxes in [0, 1] (image kept either way) and notes about what was fixed or refused."""

    boxes: list[Box] = field(default_factory=list)
    problem: str | None = None  # the XML could not be used at all
    clamped: int = 0            # boxes that reached past the image and were cut to it
    dropped: int = 0            # boxes with no area, or unreadable coordinates


def _number(node, tag: str) -> float | None:
    try:
        return float(node.findtext(tag))  # (float() takes surrounding whitespace)
    except (TypeError, ValueError):  # no such child (None), or no number in it
        return None


_NO_BOX = (None, None, None, None)


@dataclass(frozen=True)
class VocBoxes:
    """What a VOC XML says, before normalising: its <size> frame (or None) and pixel boxes.

    Compact and picklable, so a build reads every annotation once and hands boxes to its writers.
    """

    frame: tuple[float, float] | None = None
    boxes: tuple[tuple[float | None, ...], ...] = ()
    problem: str | None = None

    def __reduce__(self) -> tuple:  # a plain tuple pickles several times faster than a dataclass's state
        return VocBoxes, (self.frame, self.boxes, self.problem)


def read_voc(data: bytes) -> VocBoxes:
    """The <size> and the <bndbox> coordinates of a VOC XML; `problem` says why it is unusable."""
    try:
        root = SafeET.fromstring(data) if _DECLARES_DTD.search(data) else ET.fromstring(data)
    except (ET.ParseError, SafeET.ParseError, DefusedXmlException, ValueError) as exc:
        return VocBoxes(problem=f"malformed XML ({str(exc).splitlines()[0][:100]})")
    size = root.find("size")
    frame_w = _number(size, "width") if size is not None else None
    frame_h = _number(size, "height") if size is not None else None
    frame = (frame_w, frame_h) if frame_w and frame_h and frame_w > 0 and frame_h > 0 else None
    boxes = []
    for obj in root.iter("object"):
        bndbox = obj.find("bndbox")
        boxes.append(_NO_BOX if bndbox is None else (
            _number(bndbox, "xmin"), _number(bndbox, "ymin"), _number(bndbox, "xmax"), _number(bndbox, "ymax")))
    return VocBoxes(frame, tuple(boxes))


def normalise(voc: VocBoxes, width: int, height: int) -> ParsedBoxes:
    """Boxes in [0, 1], relative to the XML's <size> (the annotator's frame), else the image's size."""
    result = ParsedBoxes(problem=voc.problem)
    frame_w, frame_h = voc.frame or (float(width), float(height))
    for coords in voc.boxes:
        if None in coords:
            result.dropped += 1
            continue
        x0, y0, x1, y1 = coords
        raw = (min(x0, x1) / frame_w, min(y0, y1) / frame_h, max(x0, x1) / frame_w, max(y0, y1) / frame_h)
        box = (min(1.0, max(0.0, raw[0])), min(1.0, max(0.0, raw[1])),  # clamped to the image
               min(1.0, max(0.0, raw[2])), min(1.0, max(0.0, raw[3])))
        if box != raw:
            result.clamped += 1
        if box[2] <= box[0] or box[3] <= box[1]:
            result.dropped += 1
            continue
        result.boxes.append(Box(xmin=box[0], ymin=box[1], xmax=box[2], ymax=box[3]))
    return result


def parse_voc(data: bytes, width: int, height: int) -> ParsedBoxes:
    """Boxes of a VOC XML as relative, clamped boxes (see `normalise`)."""
    return normalise(read_voc(data), width, height)
