"""Damaged variants of real images for tests/test_fuzz.py: bit flips, truncation at random offsets, marker
and chunk corruption, wrong extensions and oversized headers, derived reproducibly from a seed."""
from __future__ import annotations

import io
import os
import random
import struct
import zlib
from dataclasses import dataclass
from typing import Optional

from PIL import Image

from imgshards import imaging

KINDS = ("bitflip", "truncate", "marker", "extension", "oversize")
# Extensions a file of a format is written with; "extension" variants get one of another format.
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "TIFF": "tif", "WEBP": "webp",
              "PPM": "ppm", "TGA": "tga"}
# JPEG frame headers (SOF0-SOF15 less DHT, JPG and DAC), which hold the height and width.
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True)
class Variant:
    name: str  # file name: index, kind, source
    kind: str
    source: str
    data: bytes


def encodings(photo: Image.Image) -> dict:
    """One real photo in every format and codec variant ingest takes (what Pillow writes)."""
    rgb = photo.convert("RGB")

    def save(img, fmt, **kw):
        out = io.BytesIO()
        img.save(out, format=fmt, **kw)
        return out.getvalue()

    return {
        "jpeg-progressive": save(rgb, "JPEG", quality=85, progressive=True),
        "png": save(rgb, "PNG"),
        "png-palette": save(rgb.convert("P"), "PNG"),
        "png-alpha": save(rgb.convert("RGBA"), "PNG"),
        "gif": save(rgb.convert("P"), "GIF"),
        "bmp": save(rgb, "BMP"),
        "bmp-rle8": bmp_rle8(rgb.convert("P")),
        "tiff": save(rgb, "TIFF"),
        "tiff-lzw": save(rgb, "TIFF", compression="tiff_lzw"),
        "tiff-deflate": save(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "tiff-jpeg": save(rgb, "TIFF", compression="jpeg"),
        "tiff-packbits": save(rgb, "TIFF", compression="packbits"),
        "webp": save(rgb, "WEBP", quality=80),
        "webp-lossless": save(rgb, "WEBP", lossless=True),
        "ppm": save(rgb, "PPM"),
        "tga": save(rgb, "TGA"),
        "tga-rle": save(rgb, "TGA", compression="tga_rle"),
    }


def bmp_rle8(img: Image.Image) -> bytes:
    """An 8-bit palette image as an RLE8-compressed BMP (Pillow reads these but does not write them):
    runs of up to 255 equal pixels, an end-of-line code per row, an end-of-bitmap code at the end."""
    width, height = img.size
    pixels = img.tobytes()
    stream = bytearray()
    for y in range(height - 1, -1, -1):  # bottom-up
        row = pixels[y * width:(y + 1) * width]
        x = 0
        while x < width:
            run = 1
            while x + run < width and run < 255 and row[x + run] == row[x]:
                run += 1
            stream += bytes((run, row[x]))
            x += run
        stream += b"\x00\x00"
    stream += b"\x00\x01"
    palette = img.getpalette()[:768]
    palette += [0] * (768 - len(palette))
    table = b"".join(bytes((palette[i + 2], palette[i + 1], palette[i], 0)) for i in range(0, 768, 3))
    offset = 14 + 40 + len(table)
    header = struct.pack("<2sIHHI", b"BM", offset + len(stream), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(stream), 2835, 2835, 256, 0)
    return header + info + table + bytes(stream)


def variants(sources: dict, count: int, seed: int) -> list:
    """``count`` damaged variants of ``sources`` (name -> bytes of a valid image), kinds in turn."""
    rng = random.Random(seed)
    names = sorted(sources)
    formats = {name: imaging.probe(data, 1 << 40).format for name, data in sources.items()}
    out = []
    for i in range(count):
        kind, source = KINDS[i % len(KINDS)], names[rng.randrange(len(names))]
        data, fmt = sources[source], formats[source]
        ext = EXTENSIONS[fmt]
        if kind == "bitflip":
            damaged = bit_flips(data, rng)
        elif kind == "truncate":
            damaged = data[:rng.randrange(1, len(data))]
        elif kind == "marker":
            damaged = corrupt_structure(data, fmt, rng)
        elif kind == "extension":
            damaged, ext = data, rng.choice(sorted(set(EXTENSIONS.values()) - {ext}))
        else:
            damaged = oversize(data, fmt, rng)
            if damaged is None:  # a header this does not know how to enlarge
                kind, damaged = "marker", corrupt_structure(data, fmt, rng)
        out.append(Variant(f"{i:05d}-{kind}-{source}.{ext}", kind, source, damaged))
    return out


def bit_flips(data: bytes, rng: random.Random) -> bytes:
    damaged = bytearray(data)
    for _ in range(rng.randint(1, 16)):
        position = rng.randrange(len(damaged))
        damaged[position] ^= 1 << rng.randrange(8)
    return bytes(damaged)


def corrupt_structure(data: bytes, fmt: str, rng: random.Random) -> bytes:
    """Damage the structure rather than the pixels: a JPEG marker or segment length, a PNG chunk's length,
    type, CRC or data (the CRC then fixed, so the decoder must judge the data itself), or header bytes."""
    damaged = bytearray(data)
    if fmt in ("JPEG", "MPO"):
        scan = data.find(b"\xff\xda")
        markers = [i for i in range(2, scan if scan > 0 else len(data) - 1) if data[i] == 0xFF and data[i + 1] not in (0, 0xFF)]
        if markers:
            at = rng.choice(markers)
            if rng.random() < 0.5:
                damaged[at + 1] = rng.randrange(256)
            else:
                damaged[at + 2:at + 4] = rng.randrange(65536).to_bytes(2, "big")
            return bytes(damaged)
    if fmt == "PNG":
        chunks, at = [], 8
        while at + 8 <= len(data):
            length = int.from_bytes(data[at:at + 4], "big")
            chunks.append((at, length))
            at += 12 + length
        at, length = rng.choice(chunks)
        part = rng.choice(("length", "type", "crc", "data"))
        if part == "length":
            damaged[at:at + 4] = rng.randrange(1 << 31).to_bytes(4, "big")
        elif part == "type":
            damaged[at + 4 + rng.randrange(4)] = rng.randrange(256)
        elif part == "crc" or length == 0:
            damaged[at + 8 + length:at + 12 + length] = rng.randrange(1 << 32).to_bytes(4, "big")
        else:
            damaged[at + 8 + rng.randrange(length)] ^= 1 << rng.randrange(8)
            crc = zlib.crc32(bytes(damaged[at + 4:at + 8 + length]))
            damaged[at + 8 + length:at + 12 + length] = crc.to_bytes(4, "big")
        return bytes(damaged)
    header = min(len(data), 128)
    for _ in range(rng.randint(1, 4)):
        damaged[rng.randrange(header)] = rng.randrange(256)
    return bytes(damaged)


def oversize(data: bytes, fmt: str, rng: random.Random) -> Optional[bytes]:
    """Claim a size past any sane max_pixels in the header (the pixel data stays as it was), or None."""
    damaged = bytearray(data)
    big = rng.randrange(40_000, 65_536)
    if fmt in ("JPEG", "MPO"):
        at = 2
        while at + 9 < len(data) and data[at] == 0xFF:  # walk the segments to the frame header
            if data[at + 1] in SOF_MARKERS:
                damaged[at + 5:at + 9] = struct.pack(">HH", big, big)
                return bytes(damaged)
            at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
        return None
    elif fmt == "PNG":
        damaged[16:24] = struct.pack(">II", big, big)
        damaged[29:33] = zlib.crc32(bytes(damaged[12:29])).to_bytes(4, "big")
    elif fmt == "BMP":
        damaged[18:26] = struct.pack("<ii", big, big)
    elif fmt == "GIF":
        damaged[6:10] = struct.pack("<HH", big, big)
        descriptor = data.find(b"\x2c", 13)
        if descriptor > 0:
            damaged[descriptor + 5:descriptor + 9] = struct.pack("<HH", big, big)
    elif fmt == "TGA":
        damaged[12:16] = struct.pack("<HH", big, big)
    elif fmt == "PPM":
        head = data.split(b"\n", 3)
        return b"\n".join([head[0], f"{big} {big}".encode(), *head[2:]])
    elif fmt == "TIFF":
        order = "<" if data[:2] == b"II" else ">"
        ifd = struct.unpack(order + "I", data[4:8])[0]
        entries = struct.unpack(order + "H", data[ifd:ifd + 2])[0] if ifd + 2 <= len(data) else 0
        found = 0
        for entry in range(ifd + 2, min(ifd + 2 + 12 * entries, len(data) - 11), 12):
            tag, kind = struct.unpack(order + "HH", data[entry:entry + 4])
            if tag in (256, 257):  # ImageWidth, ImageLength
                damaged[entry + 8:entry + 12] = struct.pack(order + "HH", big, 0) if kind == 3 else \
                    struct.pack(order + "I", big)
                found += 1
        if found < 2:
            return None
    elif fmt == "WEBP" and data[12:16] == b"VP8 ":  # lossy: 14-bit width and height after the start code
        damaged[26:30] = struct.pack("<HH", 0x3FFF, 0x3FFF)
    elif fmt == "WEBP" and data[12:16] == b"VP8L":  # lossless: 14-bit width-1 and height-1 after 0x2f
        bits = int.from_bytes(data[21:25], "little")
        damaged[21:25] = (bits | (1 << 28) - 1).to_bytes(4, "little")
    elif fmt == "WEBP" and data[12:16] == b"VP8X":
        damaged[24:30] = (big - 1).to_bytes(3, "little") * 2
    else:
        return None
    return bytes(damaged)


def write(variants_: list, root: str) -> None:
    os.makedirs(root, exist_ok=True)
    for variant in variants_:
        with open(os.path.join(root, variant.name), "wb") as f:
            f.write(variant.data)
