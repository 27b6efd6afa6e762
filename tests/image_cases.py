"""Image files that tests build themselves: good ones of every format, and every kind of bad input.

:func:`build_messy_folder` writes a class-per-folder tree and returns what each file
must become (error kind, or format/mode/size/channels); tests compare ingestion's rows
with it. Nothing here is read from the network or the shared data.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: Displayed test pattern for EXIF orientations: 2 x 3 blocks of 16 px, all colours distinct,
#: so every flip and rotation gives a different picture.
BLOCK = 16
BLOCK_COLOURS = np.array(
    [[(230, 25, 25), (25, 200, 25), (25, 25, 230)], [(240, 240, 20), (20, 230, 230), (230, 20, 230)]],
    dtype=np.uint8,
)


def oriented_pattern() -> np.ndarray:
    """The picture as it must be displayed: uint8 (32, 48, 3)."""
    return np.kron(BLOCK_COLOURS, np.ones((BLOCK, BLOCK, 1), dtype=np.uint8))


def stored_for_orientation(displayed: np.ndarray, orientation: int) -> np.ndarray:
    """The pixel array a camera stores so that EXIF ``orientation`` displays ``displayed``.

    Written from the EXIF 2.3 definitions of where the stored 0th row and 0th column
    appear (e.g. 6 = "0th row is the visual right side, 0th column the visual top"),
    independently of Pillow's transpose table.
    """
    height, width = displayed.shape[:2]
    transposed = orientation in (5, 6, 7, 8)
    hs, ws = (width, height) if transposed else (height, width)
    i, j = np.meshgrid(np.arange(hs), np.arange(ws), indexing="ij")
    row, col = {
        1: (i, j),
        2: (i, ws - 1 - j),
        3: (hs - 1 - i, ws - 1 - j),
        4: (hs - 1 - i, j),
        5: (j, i),
        6: (j, hs - 1 - i),
        7: (ws - 1 - j, hs - 1 - i),
        8: (ws - 1 - j, i),
    }[orientation]
    return displayed[row, col]


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def jpeg_with_orientation(orientation: int, quality: int = 95) -> bytes:
    stored = Image.fromarray(stored_for_orientation(oriented_pattern(), orientation))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=quality, subsampling=0, exif=exif.tobytes())


def noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def smooth(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB gradient (JPEG-friendly, unlike noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [np.sin(x / rng.uniform(5, 20) + rng.uniform(0, 6)) + np.cos(y / rng.uniform(5, 20)) for _ in range(3)]
    return np.clip(np.stack(channels, -1) * 60 + 128, 0, 255).astype(np.uint8)


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid 1-bit PNG of ``width x height`` black pixels: ~100 KB on disk, 900 MP decoded."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def animated_gif() -> tuple[bytes, tuple[int, int, int]]:
    """Three frames of different solid colours; returns the bytes and frame 0's colour."""
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    frames = [Image.new("RGB", (20, 10), c).convert("P", palette=Image.Palette.ADAPTIVE) for c in colours]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return data, colours[0]


def palette_with_transparency() -> bytes:
    """A P-mode PNG: index 0 transparent (its palette colour is black), index 1 red."""
    img = Image.new("P", (8, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    for x in range(4, 8):
        for y in range(4):
            img.putpixel((x, y), 1)
    return encode(img, "PNG", transparency=0)


def sixteen_bit_png() -> tuple[bytes, np.ndarray]:
    values = np.array([[0, 257, 32768, 65535], [1000, 2000, 40000, 65280]], dtype=np.uint16)
    return encode(Image.fromarray(values), "PNG"), values


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (16, 8), (0, 255, 255, 0)), "JPEG", quality=95)


@dataclass(frozen=True)
class Case:
    """What one file under the root must become."""

    rel: bytes  # path under the root, raw bytes (may not be UTF-8)
    kind: str | None = None  # expected error kind; None: a usable row
    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    channels: int | None = None

    @property
    def label(self) -> str | None:
        parts = self.rel.split(b"/")
        return parts[0].decode("utf-8", "backslashreplace") if len(parts) > 1 else None

    def path_under(self, root: Path) -> str:
        """The ``path`` column value ingestion must report."""
        return "file:" + (os.fsencode(root.resolve()) + b"/" + self.rel).decode("utf-8", "backslashreplace")


def _patched(data: bytes, marker: bytes, offset: int, replacement: bytes) -> bytes:
    """``data`` with ``replacement`` written ``offset`` bytes after the first ``marker``."""
    out = bytearray(data)
    start = data.index(marker) + offset
    out[start: start + len(replacement)] = replacement
    return bytes(out)


def _write(root: Path, rel: bytes, data: bytes) -> None:
    target = os.path.join(os.fsencode(root), rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as handle:
        handle.write(data)


def is_root() -> bool:
    return os.geteuid() == 0


def build_messy_folder(root: Path, with_bomb: bool = True) -> list[Case]:
    """Write good and bad files under ``root`` (classes: good, bad, rotated, empty) and return the cases."""
    root.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(rel: str | bytes, data: bytes, **expected) -> None:
        rel_b = rel if isinstance(rel, bytes) else rel.encode()
        _write(root, rel_b, data)
        cases.append(Case(rel_b, **expected))

    photo = Image.fromarray(smooth(48, 64))
    grey = Image.fromarray(smooth(48, 64)[:, :, 0])
    jpeg = encode(photo, "JPEG", quality=90)
    png = encode(Image.fromarray(noise(48, 64)), "PNG")

    # Good files of every supported format.
    add("good/photo.jpg", jpeg, format="JPEG", mode="RGB", width=64, height=48, channels=3)
    add("good/UPPER.JPEG", jpeg, format="JPEG", mode="RGB", width=64, height=48, channels=3)
    add("good/grey.jpg", encode(grey, "JPEG"), format="JPEG", mode="L", width=64, height=48, channels=1)
    add("good/noise.png", png, format="PNG", mode="RGB", width=64, height=48, channels=3)
    add("good/bitmap.bmp", encode(photo, "BMP"), format="BMP", mode="RGB", width=64, height=48, channels=3)
    add("good/still.gif", encode(photo.convert("P"), "GIF"), format="GIF", mode="P", width=64, height=48, channels=3)
    add("good/scan.tif", encode(photo, "TIFF", compression="tiff_lzw"), format="TIFF", mode="RGB", width=64,
        height=48, channels=3)
    add("good/web.webp", encode(photo, "WEBP", quality=90), format="WEBP", mode="RGB", width=64, height=48,
        channels=3)
    add("good/grey.pgm", encode(grey, "PPM"), format="PPM", mode="L", width=64, height=48, channels=1)
    add("good/colour.ppm", encode(photo, "PPM"), format="PPM", mode="RGB", width=64, height=48, channels=3)
    add("good/alpha.png", encode(photo.convert("RGBA"), "PNG"), format="PNG", mode="RGBA", width=64, height=48,
        channels=4)
    add("good/grey_alpha.png", encode(grey.convert("LA"), "PNG"), format="PNG", mode="LA", width=64, height=48,
        channels=2)
    add("good/bilevel.png", encode(grey.convert("1"), "PNG"), format="PNG", mode="1", width=64, height=48,
        channels=1)
    # Inputs the issue lists as hard but valid: they must decode, not error.
    gif, _ = animated_gif()
    add("good/animated.gif", gif, format="GIF", mode="P", width=20, height=10, channels=3)
    add("good/deep.png", sixteen_bit_png()[0], format="PNG", mode="I;16", width=4, height=2, channels=1)
    add("good/print.jpg", cmyk_jpeg(), format="JPEG", mode="CMYK", width=16, height=8, channels=4)
    add("good/palette_alpha.png", palette_with_transparency(), format="PNG", mode="P", width=8, height=4,
        channels=4)
    # A name that is not valid UTF-8 (Latin-1 'café'), with a good image inside.
    add(b"good/caf\xe9.jpg", jpeg, format="JPEG", mode="RGB", width=64, height=48, channels=3)
    add("good/with space & 'quote'.png", png, format="PNG", mode="RGB", width=64, height=48, channels=3)
    add("good/100% #1 [a] {b,c} ~d=e;f,g@h.png", png, format="PNG", mode="RGB", width=64, height=48, channels=3)
    add("good/time 12:30.png", png, format="PNG", mode="RGB", width=64, height=48, channels=3)
    add("good/café 日本.png", png, format="PNG", mode="RGB", width=64, height=48, channels=3)

    add("loose.png", png, format="PNG", mode="RGB", width=64, height=48, channels=3)  # no class folder
    add("good/deeper/nested.jpg", jpeg, format="JPEG", mode="RGB", width=64, height=48, channels=3)

    for orientation in range(1, 9):
        add(f"rotated/orientation_{orientation}.jpg", jpeg_with_orientation(orientation), format="JPEG",
            mode="RGB", width=48, height=32, channels=3)

    # Bad input: each must be one row with this error kind.
    add("bad/zero.jpg", b"", kind="empty_file")
    add("bad/truncated.jpg", jpeg[: len(jpeg) // 2], kind="truncated")
    add("bad/truncated.png", png[: len(png) // 2], kind="truncated")
    add("bad/header_only.png", png[:20], kind="truncated")
    corrupt_png = bytearray(png)
    corrupt_png[200:260] = b"\x00" * 60  # inside IDAT: the zlib stream breaks
    add("bad/corrupt.png", bytes(corrupt_png), kind="corrupt")
    add("bad/cut_late.jpg", jpeg[: len(jpeg) * 3 // 4], kind="truncated")
    add("bad/bad_huffman.jpg", _patched(jpeg, b"\xff\xc4", 5, b"\xff" * 16), kind="corrupt")
    add("bad/bad_header.jpg", _patched(jpeg, b"\xff\xc0", 9, b"\x00"), kind="corrupt")  # 0 components
    add("bad/notes.png", b"These are my holiday notes, not a picture.\n" * 20, kind="not_an_image")
    add("bad/page.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n", kind="not_an_image")
    if with_bomb:
        add("bad/bomb.png", bomb_png(), kind="too_many_pixels")
    # Unreadable files. Root reads anything, so a dangling link and a link loop stand in for
    # unreadable permissions; a real chmod 000 file is added when not running as root.
    os.symlink(os.fsencode(root) + b"/bad/does-not-exist.jpg", os.fsencode(root) + b"/bad/dangling.jpg")
    cases.append(Case(b"bad/dangling.jpg", kind="unreadable"))
    os.symlink(os.fsencode(root) + b"/bad/loop.jpg", os.fsencode(root) + b"/bad/loop.jpg")
    cases.append(Case(b"bad/loop.jpg", kind="unreadable"))
    os.mkfifo(os.fsencode(root) + b"/bad/pipe.jpg")  # reading it would block: must be refused, not read
    cases.append(Case(b"bad/pipe.jpg", kind="unreadable"))
    if not is_root():
        add("bad/secret.jpg", jpeg, kind="unreadable")
        os.chmod(root / "bad" / "secret.jpg", 0)

    # Not rows: an empty class folder, hidden files and files without an image extension.
    (root / "empty").mkdir()
    _write(root, b"good/.DS_Store", b"\x00\x00\x00\x01Bud1")
    _write(root, b"good/readme.txt", b"not an image extension")
    return cases
