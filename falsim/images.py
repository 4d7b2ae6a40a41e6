"""Deterministic PNG images, cheap enough to make hundreds of 2K files per second.

An image is a 16-colour composition (horizontal gradient bands, blocky discs, rectangles) whose
colours and geometry come from a SHA-256 of (prompt, seed, aspect ratio, resolution). Rows change
only at a few y boundaries, so the PNG is encoded as: each distinct row once (filter None), and
every repeat as a filter-Up row of zeros. The deflate stream is stitched from independently
compressed, byte-aligned pieces; runs of repeated rows reuse pieces cached per row width, so the
cost of one image does not grow with its height.

Sizes: the long side is 1024 px (1K) or 2048 px (2K); the short side is long * minor / major of the
ratio, rounded to the nearest integer:

| ratio | 1K | 2K |
|---|---|---|
| 1:1 | 1024x1024 | 2048x2048 |
| 16:9 / 9:16 | 1024x576 | 2048x1152 |
| 4:3 / 3:4 | 1024x768 | 2048x1536 |
| 3:2 / 2:3 | 1024x683 | 2048x1365 |
| 21:9 | 1024x439 | 2048x878 |
| 5:4 / 4:5 | 1024x819 | 2048x1638 |
| 3:1 / 1:3 | 1024x341 | 2048x683 |
| 4:1 / 1:4 | 1024x256 | 2048x512 |

(the portrait ratios swap width and height).
"""

from __future__ import annotations

import bisect
import colorsys
import hashlib
import struct
import threading
import zlib
from collections import OrderedDict
from functools import lru_cache

LONG_SIDE = {"1K": 1024, "2K": 2048}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ADLER_BASE = 65521
# The empty final deflate block (BFINAL=1, fixed Huffman, end-of-block code), byte aligned.
_FINAL_BLOCK = b"\x03\x00"
# One byte of two equal 4-bit pixels, per palette index.
_FILL = [bytes([index * 17]) for index in range(16)]


def image_size(aspect_ratio: str, resolution: str) -> tuple[int, int]:
    """(width, height) of an image with this ratio (`W:H`) and resolution (`1K`/`2K`)."""
    long_side = LONG_SIDE[resolution]
    a, b = (int(part) for part in aspect_ratio.split(":"))
    if a >= b:
        return long_side, round(long_side * b / a)
    return round(long_side * a / b), long_side


def _adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    # zlib's adler32_combine, which Python's zlib module does not expose.
    rem = len2 % _ADLER_BASE
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % _ADLER_BASE
    sum1 += (adler2 & 0xFFFF) + _ADLER_BASE - 1
    sum2 += ((adler1 >> 16) & 0xFFFF) + ((adler2 >> 16) & 0xFFFF) + _ADLER_BASE - rem
    sum1 %= _ADLER_BASE
    sum2 %= _ADLER_BASE
    return sum1 | (sum2 << 16)


def _deflate_piece(data: bytes, level: int, wbits: int = -9) -> bytes:
    """Raw deflate of `data` as non-final, byte-aligned blocks that need no earlier window."""
    # A 512-byte window and the smallest hash table: rows are runs, and a full-size compressor
    # costs ten times more to set up than to run.
    comp = zlib.compressobj(level, zlib.DEFLATED, wbits, 1)
    return comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)


@lru_cache(maxsize=64)
def _repeat_pieces(row_bytes: int) -> tuple[tuple[bytes, int, int], ...]:
    """For k = 0..11: (deflate piece, adler32, length) of 2**k filter-Up rows of zeros."""
    pieces = []
    for k in range(12):
        raw = (b"\x02" + bytes(row_bytes)) * (1 << k)
        pieces.append((_deflate_piece(raw, 9, -15), zlib.adler32(raw), len(raw)))
    return tuple(pieces)


@lru_cache(maxsize=8192)
def _repeat_run(row_bytes: int, count: int) -> tuple[bytes, int, int]:
    """(deflate pieces, adler32, length) of `count` filter-Up rows of zeros, from the k-pieces."""
    pieces = _repeat_pieces(row_bytes)
    out: list[bytes] = []
    adler, length = 1, 0
    k = 0
    while count:
        if count & 1:
            piece, piece_adler, piece_length = pieces[k]
            out.append(piece)
            adler = _adler32_combine(adler, piece_adler, piece_length)
            length += piece_length
        count >>= 1
        k += 1
    return b"".join(out), adler, length


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


class _Composition:
    """The geometry and palette of one image, drawn from a digest."""

    def __init__(self, digest: bytes, width: int, height: int) -> None:
        self.width = width
        self.height = height
        stream = _ByteStream(digest)
        hue_a, hue_b = stream.next() / 256, stream.next() / 256
        palette: list[tuple[int, int, int]] = []
        for i in range(8):
            t = i / 7
            hue = (hue_a + (hue_b - hue_a) * t) % 1.0
            palette.append(_rgb(hue, 0.35 + 0.3 * t, 0.95 - 0.45 * t))
        for _ in range(8):
            palette.append(_rgb(stream.next() / 256, 0.55 + stream.next() / 700, 0.9))
        self.palette = palette
        block = max(width, height) // 32
        self.block = block
        # Row boundaries of the background bands, then the shapes drawn on top of them.
        bands = 6 + stream.next() % 5
        self.band_edges = [round(height * i / bands) for i in range(bands + 1)]
        self.band_colours = [round(7 * i / max(1, bands - 1)) for i in range(bands)]
        if stream.next() % 2:
            self.band_colours.reverse()
        self.shapes: list[tuple[int, int, int, int, bool]] = []
        for index in range(2 + stream.next() % 3):
            cx = stream.next() * width // 256
            cy = stream.next() * height // 256
            radius = max(block, (6 + stream.next() % 10) * min(width, height) // 40)
            self.shapes.append((cx, cy, radius, 8 + (stream.next() + index) % 8, index % 2 == 0))

    def _row(self, y: int) -> bytes:
        """The 4-bit row at y, two equal pixels per byte."""
        row_bytes = (self.width + 1) // 2
        band = bisect.bisect_right(self.band_edges, y) - 1
        row = bytearray(_FILL[self.band_colours[band]] * row_bytes)
        block = self.block
        by = (y // block) * block + block // 2
        for cx, cy, radius, colour, disc in self.shapes:
            dy = by - cy
            if disc:
                if abs(dy) > radius:
                    continue
                half = int((radius * radius - dy * dy) ** 0.5)
                half = (half // block) * block
            else:
                if abs(dy) > radius * 2 // 3:
                    continue
                half = radius
            x0 = max(0, (cx - half) // 2)
            x1 = min(row_bytes, (cx + half) // 2)
            if x1 > x0:
                row[x0:x1] = _FILL[colour] * (x1 - x0)
        return bytes(row)

    def boundaries(self) -> list[int]:
        """Every y where a row may differ from the row above it."""
        edges = set(self.band_edges[:-1])
        block = self.block
        edges.update(range(0, self.height, block))
        return sorted(edge for edge in edges if edge < self.height)

    def encode(self) -> bytes:
        """The PNG file."""
        row_bytes = (self.width + 1) // 2
        pieces: list[bytes] = []
        adler = 1
        previous: bytes | None = None
        edges = self.boundaries()
        for index, y0 in enumerate(edges):
            y1 = edges[index + 1] if index + 1 < len(edges) else self.height
            row = self._row(y0)
            repeats = y1 - y0
            if row != previous:
                raw = b"\x00" + row
                pieces.append(_deflate_piece(raw, 6))
                adler = zlib.adler32(raw, adler)
                repeats -= 1
                previous = row
            if repeats:
                piece, piece_adler, length = _repeat_run(row_bytes, repeats)
                pieces.append(piece)
                adler = _adler32_combine(adler, piece_adler, length)
        idat = b"\x78\x01" + b"".join(pieces) + _FINAL_BLOCK + struct.pack(">I", adler)
        header = struct.pack(">IIBBBBB", self.width, self.height, 4, 3, 0, 0, 0)
        plte = b"".join(bytes(rgb) for rgb in self.palette)
        return (
            PNG_SIGNATURE
            + _chunk(b"IHDR", header)
            + _chunk(b"PLTE", plte)
            + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b"")
        )


class _ByteStream:
    """Bytes of a digest, re-hashed when used up, so any number of draws stays deterministic."""

    def __init__(self, seed: bytes) -> None:
        self._buffer = seed
        self._pos = 0

    def next(self) -> int:
        if self._pos >= len(self._buffer):
            self._buffer = hashlib.sha256(self._buffer).digest()
            self._pos = 0
        value = self._buffer[self._pos]
        self._pos += 1
        return value


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue, min(1.0, saturation), min(1.0, value))
    return round(r * 255), round(g * 255), round(b * 255)


def image_digest(prompt: str, seed: int, aspect_ratio: str, resolution: str) -> bytes:
    """The digest that decides an image's colours and geometry."""
    key = "\x1f".join([prompt, str(seed), aspect_ratio, resolution])
    return hashlib.sha256(key.encode("utf-8")).digest()


def render_png(prompt: str, seed: int, aspect_ratio: str, resolution: str) -> bytes:
    """The PNG for this input: the same input always gives the same bytes."""
    width, height = image_size(aspect_ratio, resolution)
    digest = image_digest(prompt, seed, aspect_ratio, resolution)
    return _Composition(digest, width, height).encode()


class PNGCache:
    """A thread-safe LRU of rendered PNGs bounded by total bytes."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int, str, str], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, prompt: str, seed: int, aspect_ratio: str, resolution: str) -> bytes:
        """The PNG for this input, rendered on a miss."""
        key = (prompt, seed, aspect_ratio, resolution)
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return data
            self.misses += 1
        data = render_png(prompt, seed, aspect_ratio, resolution)
        with self._lock:
            if key not in self._items:
                self._items[key] = data
                self._size += len(data)
                while self._size > self.max_bytes and self._items:
                    _, evicted = self._items.popitem(last=False)
                    self._size -= len(evicted)
        return data

    def clear(self) -> None:
        """Forget every cached image."""
        with self._lock:
            self._items.clear()
            self._size = 0
