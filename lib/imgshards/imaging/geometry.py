"""Resize geometry: which source box of a width x height image becomes which part of a size x size output,
for each resize mode. Pure arithmetic, shared by the Pillow path and the DALI graph."""
from __future__ import annotations

from dataclasses import dataclass

# crop: shorter side to size, then center crop; letterbox: longer side to size, padded to a square;
# exact: the whole image to size x size (aspect ratio not kept).
RESIZE_MODES = ("crop", "letterbox", "exact")


@dataclass(frozen=True)
class Geometry:
    """How a width x height image becomes size x size: the source ``box`` (left, top, right, bottom; sub-pixel)
    is resized to ``resized`` (width, height) and placed at ``offset`` (x, y) on a size x size canvas."""

    box: tuple
    resized: tuple
    offset: tuple = (0, 0)

    def box_in(self, width: int, height: int, decoded: tuple) -> tuple:
        """The box of a width x height image in the pixels of that image decoded at ``decoded`` (width,
        height), e.g. scaled in a JPEG's DCT."""
        sx, sy = decoded[0] / width, decoded[1] / height
        left, top, right, bottom = self.box
        return (left * sx, top * sy, right * sx, bottom * sy)

    def relative_box(self, width: int, height: int) -> tuple:
        left, top, right, bottom = self.box
        return (left / width, top / height, right / width, bottom / height)


def geometry(width: int, height: int, size: int, mode: str = "crop") -> Geometry:
    if mode == "crop":
        side = min(width, height)
        left, top = (width - side) / 2.0, (height - side) / 2.0
        return Geometry((left, top, left + side, top + side), (size, size))
    if mode == "exact":
        return Geometry((0.0, 0.0, float(width), float(height)), (size, size))
    if mode == "letterbox":
        scale = size / max(width, height)
        w, h = max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale)))
        return Geometry((0.0, 0.0, float(width), float(height)), (w, h), ((size - w) // 2, (size - h) // 2))
    raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")


def center_crop_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """Source-space box that, resized to size x size, is 'shorter side to size, then center crop'."""
    return geometry(width, height, size, "crop").box
