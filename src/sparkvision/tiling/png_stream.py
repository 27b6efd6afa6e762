"""Row streaming for PNG: a band of rows at a time, never the whole image.

Pillow decodes a PNG whole. Here the IDAT stream is inflated incrementally and each band
of filtered scanlines is handed to Pillow's own C decoder inside a small synthetic PNG:
its first row is the previous band's last row, already unfiltered, stored with filter
type 0, so the band's own filters (Up, Average, Paeth) see the right predecessor. The
synthetic image is labelled with an 8-bit colour type of the same bytes per pixel
(grey, grey+alpha, RGB, RGBA for 1-4 bytes), which makes Pillow return the raw
unfiltered bytes; they are then read back in the file's real colour type and bit depth.

Streams when the PNG is not interlaced and has at most 4 bytes per pixel (everything
but 16-bit RGB/RGBA) and no colour-key transparency on grey/RGB; other PNGs are decoded
whole. The pixels equal Pillow's whole-image decode (tests compare them).
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np
from PIL import Image

from sparkvision.io.decode import pillow_open
from sparkvision.io.errors import ErrorKind, ImageError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: 8-bit colour types whose pixels have 1-4 bytes: what a band is relabelled as.
_RELABEL = {1: (0, "L"), 2: (4, "LA"), 3: (2, "RGB"), 4: (6, "RGBA")}
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


class PngRowStream:
    """Sequential reader of a PNG's rows from a file object positioned at its start."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._start = fh.tell()
        self._parse_header()
        self.restart()

    def _read_chunk(self) -> tuple[bytes, bytes]:
        head = self._fh.read(8)
        if len(head) < 8:
            raise ImageError(ErrorKind.TRUNCATED, "PNG ends before its IEND chunk")
        length, kind = struct.unpack(">I4s", head)
        data = self._fh.read(length)
        crc = self._fh.read(4)
        if len(data) < length or len(crc) < 4:
            raise ImageError(ErrorKind.TRUNCATED, f"PNG chunk {kind!r} is cut short")
        return kind, data

    def _parse_header(self) -> None:
        if self._fh.read(8) != SIGNATURE:
            raise ImageError(ErrorKind.NOT_AN_IMAGE, "not a PNG signature")
        kind, data = self._read_chunk()
        if kind != b"IHDR" or len(data) != 13:
            raise ImageError(ErrorKind.CORRUPT, "PNG does not start with a valid IHDR chunk")
        (self.width, self.height, self.depth, self.color_type, _, _, self.interlace) = struct.unpack(">IIBBBBB", data)
        if self.color_type not in _CHANNELS or self.width == 0 or self.height == 0:
            raise ImageError(ErrorKind.CORRUPT, f"invalid PNG header (colour type {self.color_type})")
        self.ihdr = data
        self.palette: bytes | None = None
        self.transparency: bytes | None = None
        self.orientation = 1
        while True:
            self._idat_offset = self._fh.tell()
            kind, data = self._read_chunk()
            if kind == b"IDAT":
                self._first_idat = data
                break
            if kind == b"PLTE":
                self.palette = data
            elif kind == b"tRNS":
                self.transparency = data
            elif kind == b"eXIf":
                self.orientation = _exif_orientation(data)
            elif kind == b"IEND":
                raise ImageError(ErrorKind.CORRUPT, "PNG has no image data (IDAT)")
        channels = _CHANNELS[self.color_type]
        self.pixel_bytes = max(1, channels * self.depth // 8)
        self.row_bytes = (self.width * channels * self.depth + 7) // 8

    @property
    def streamable(self) -> bool:
        """Whether rows can stream (else the image must be decoded whole)."""
        colour_key = self.transparency is not None and self.color_type in (0, 2)
        return self.interlace == 0 and self.pixel_bytes in _RELABEL and not colour_key and self.orientation == 1

    def restart(self) -> None:
        self._fh.seek(self._idat_offset)
        self._inflate = zlib.decompressobj()
        self._pending = bytearray()
        self._done = False
        self.next_row = 0
        self._previous: bytes | None = None

    def _fill(self, needed: int) -> None:
        while len(self._pending) < needed and not self._done:
            kind, data = self._read_chunk()
            if kind == b"IDAT":
                try:
                    self._pending += self._inflate.decompress(data)
                except zlib.error as exc:
                    raise ImageError(ErrorKind.CORRUPT, f"PNG image data cannot be inflated ({exc})") from None
            elif kind == b"IEND":
                self._done = True

    def read_raw(self, count: int) -> np.ndarray:
        """The next ``count`` rows, unfiltered, as uint8 (count, row_bytes)."""
        count = min(count, self.height - self.next_row)
        if count <= 0:
            return np.empty((0, self.row_bytes), np.uint8)
        stride = self.row_bytes + 1
        self._fill(count * stride)
        if len(self._pending) < count * stride:
            raise ImageError(ErrorKind.TRUNCATED, f"PNG data ends at row {self.next_row + len(self._pending) // stride}")
        filtered = bytes(self._pending[: count * stride])
        del self._pending[: count * stride]
        lead = b"" if self._previous is None else b"\x00" + self._previous
        rows = count + (1 if lead else 0)
        relabel_type, relabel_mode = _RELABEL[self.pixel_bytes]
        header = struct.pack(">IIBBBBB", self.row_bytes // self.pixel_bytes, rows, 8, relabel_type, 0, 0, 0)
        png = SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(lead + filtered, 0)) + _chunk(b"IEND", b"")
        try:
            band = pillow_open(png)  # the scene's own pixel limit was checked when it was opened
            band.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(ErrorKind.CORRUPT, f"PNG rows {self.next_row}+ cannot be decoded ({exc})") from None
        raw = np.asarray(band, dtype=np.uint8).reshape(rows, self.row_bytes)
        if lead:
            raw = raw[1:]
        self._previous = raw[-1].tobytes()
        self.next_row += count
        return raw

    def to_image(self, raw: np.ndarray) -> Image.Image:
        """Raw rows as the Pillow image a whole decode of those rows would give."""
        rows = raw.shape[0]
        depth, ctype, width = self.depth, self.color_type, self.width
        if ctype == 0 and depth == 16:
            values = raw.view(">u2").reshape(rows, width).astype(np.uint16)
            return Image.fromarray(values)
        if ctype == 0 and depth == 8:
            return Image.fromarray(raw.reshape(rows, width), mode="L")
        if ctype in (0, 3) and depth < 8:
            values = _unpack(raw, depth, width)
            if ctype == 0:
                if depth == 1:
                    return Image.fromarray(values.astype(bool))
                return Image.fromarray((values * (255 // (2**depth - 1))).astype(np.uint8), mode="L")
            return self._palette_image(values)
        if ctype == 3:
            return self._palette_image(raw.reshape(rows, width))
        if ctype == 2:
            return Image.fromarray(raw.reshape(rows, width, 3), mode="RGB")
        if ctype == 4:
            return Image.fromarray(raw.reshape(rows, width, 2), mode="LA")
        return Image.fromarray(raw.reshape(rows, width, 4), mode="RGBA")

    def _palette_image(self, indices: np.ndarray) -> Image.Image:
        if self.palette is None:
            raise ImageError(ErrorKind.CORRUPT, "palette PNG without a PLTE chunk")
        img = Image.fromarray(indices.astype(np.uint8), mode="P")
        img.putpalette(self.palette)
        if self.transparency is not None:
            img.info["transparency"] = self.transparency
        return img


def _unpack(raw: np.ndarray, depth: int, width: int) -> np.ndarray:
    bits = np.unpackbits(raw, axis=1)
    per = bits.reshape(raw.shape[0], -1, depth)[:, :width]
    weights = (1 << np.arange(depth - 1, -1, -1)).astype(np.uint8)
    return (per * weights).sum(axis=2).astype(np.uint8)


def _exif_orientation(data: bytes) -> int:
    try:
        exif = Image.Exif()
        exif.load(data if data.startswith(b"Exif") else b"Exif\x00\x00" + data)
        value = int(exif.get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block means no rotation, as in ingestion
        return 1
    return value if 1 <= value <= 8 else 1
