"""A corpus of hostile and unusual image files, each with the outcome a reader must reach.

:func:`make_bad_corpus` writes files that break readers in the wild -- empty and random
files, truncations at every stage, decompression bombs (a 20000 x 20000 PNG of a few
tens of KB, a TIFF of a few hundred bytes declaring 60000 x 60000, a GIF with a
65535 x 65535 screen), content under the wrong suffix, animated GIF, CMYK JPEG, 16-bit
PNG, palette transparency, invalid and broken EXIF -- plus seeded byte flips and
truncations of valid files. Each name maps to an :class:`Expectation`: ``"ok"`` and/or
the :class:`~dagflow.exceptions.BadInputError` reasons allowed.

The contract, in the spirit of Pillow's fuzzer tests: every file ends in success or in
a named ``BadInputError`` -- never another exception, never a hang, never a silently
grey or clipped image (:func:`check_file` also checks shape and dtype where known).

This module owns the hostile corpus; ordinary samples live in
:mod:`dagflow.testing.samples`.
"""

from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from dagflow.exceptions import BadInputError
from dagflow.image import Image
from dagflow.io.atomic import atomic_write
from dagflow.io.read import read_image
from dagflow.testing.exif import (
    encode_jpeg,
    exif_block,
    garbage_exif_block,
    insert_exif,
    truncated_exif_block,
)
from dagflow.testing.samples import pillow_bytes
from dagflow.testing.synthetic import photo_like

__all__ = [
    "OK",
    "Expectation",
    "bad_corpus_files",
    "check_file",
    "make_bad_corpus",
    "read_outcome",
]

#: The outcome of a file that reads successfully.
OK = "ok"

_BROKEN = frozenset({"truncated", "corrupt"})
_ANY = frozenset(
    {OK, "truncated", "corrupt", "unidentified", "unsupported_mode", "unsupported_codec",
     "oversize"}
)

#: How many seeded mutations (byte flips and truncations) of valid files to write.
MUTATIONS = 20


@dataclass(frozen=True)
class Expectation:
    """What reading one corpus file must end in.

    Parameters
    ----------
    outcomes
        ``"ok"`` and/or the allowed ``BadInputError.reason`` values.
    description
        What the file is, for test ids and failure messages.
    shape
        When reading succeeds, the exact ``(y, x, c)`` expected, if known.
    dtype
        When reading succeeds, the dtype name expected, if known.
    frames
        When reading succeeds, ``meta["frames"]`` expected, if known.
    probe_ok
        Whether :func:`dagflow.io.probe_header` must succeed (headers intact).
    """

    outcomes: frozenset[str]
    description: str = ""
    shape: tuple[int, int, int] | None = None
    dtype: str | None = None
    frames: int | None = None
    probe_ok: bool = False

    def allows(self, outcome: str) -> bool:
        """Whether ``outcome`` (``"ok"`` or a reason) is acceptable."""
        return outcome in self.outcomes


def _expect(*outcomes: str, **fields: Any) -> Expectation:
    return Expectation(frozenset(outcomes), **fields)


def read_outcome(path: str | PathLike[str], **read_kwargs: Any) -> tuple[str, Image | None]:
    """Read a file and name the outcome: ``("ok", image)`` or ``(reason, None)``.

    Any exception other than :class:`BadInputError` propagates: that is a bug.
    """
    try:
        image = read_image(path, **read_kwargs)
    except BadInputError as exc:
        return exc.reason, None
    return OK, image


def check_file(path: str | PathLike[str], expectation: Expectation, **read_kwargs: Any) -> str:
    """Read ``path`` and check the outcome against ``expectation``; return the outcome.

    Raises
    ------
    AssertionError
        The outcome is not allowed, or a successful read has the wrong shape, dtype or
        frame count.
    """
    outcome, image = read_outcome(path, **read_kwargs)
    if not expectation.allows(outcome):
        raise AssertionError(
            f"{path} ({expectation.description}): got {outcome!r}, "
            f"expected one of {sorted(expectation.outcomes)}"
        )
    if image is not None:
        if expectation.shape is not None and image.data.shape != expectation.shape:
            raise AssertionError(f"{path}: shape {image.data.shape} != {expectation.shape}")
        if expectation.dtype is not None and image.data.dtype.name != expectation.dtype:
            raise AssertionError(f"{path}: dtype {image.data.dtype} != {expectation.dtype}")
        if expectation.frames is not None and image.meta.get("frames") != expectation.frames:
            frames = image.meta.get("frames")
            raise AssertionError(f"{path}: frames {frames} != {expectation.frames}")
    return outcome


def _png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG by libpng (Pillow writes 16 bits for grey only)."""
    import imagecodecs

    return bytes(imagecodecs.png_encode(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels))


def make_bad_corpus(
    directory: str | PathLike[str], seed: int = 0
) -> dict[str, Expectation]:
    """Write the hostile corpus under ``directory``.

    Parameters
    ----------
    directory
        Where to write (created if missing).
    seed
        Seeds the pixels, the random files and the mutations; same seed, same bytes.

    Returns
    -------
    dict
        File name (relative to ``directory``) -> :class:`Expectation`.
    """
    root = Path(directory)
    files = bad_corpus_files(seed)
    for name, (data, _expectation) in files.items():
        atomic_write(root / name, data)
    return {name: expectation for name, (_data, expectation) in files.items()}


def bad_corpus_files(seed: int = 0) -> dict[str, tuple[bytes, Expectation]]:
    """The hostile corpus in memory: file name -> ``(bytes, Expectation)``.

    What :func:`make_bad_corpus` writes; useful to parametrise tests at collection time.
    """
    rng = np.random.default_rng(seed)
    rgb = photo_like(96, 128, seed=seed + 1)
    jpeg = encode_jpeg(rgb, quality=90)
    png = pillow_bytes(PILImage.fromarray(rgb), "PNG")
    gif = _animated_gif(seed)
    webp = pillow_bytes(PILImage.fromarray(rgb), "WEBP", quality=80)
    tiff = _tiff_bytes(rgb)
    entries: dict[str, tuple[bytes, Expectation]] = {}

    def add(name: str, data: bytes, expectation: Expectation) -> None:
        entries[name] = (data, expectation)

    shape = (96, 128, 3)
    # Nothing, or not an image at all.
    add("empty.jpg", b"", _expect("empty_file", description="zero bytes named .jpg"))
    add("empty.png", b"", _expect("empty_file", description="zero bytes named .png"))
    add("random.jpg", b"\x00" + rng.bytes(2047), _expect("unidentified", description="noise"))
    add("random.tif", b"\x01" + rng.bytes(511), _expect("unidentified", description="noise"))
    add("text.png", b"this is not an image\n", _expect("unidentified", description="text"))
    add("html.jpg", b"<html><body>404</body></html>", _expect("unidentified", description="html"))
    # Magic bytes and little else; truncations at each stage.
    add("magic_only.jpg", b"\xff\xd8\xff", _expect(*_BROKEN, description="JPEG SOI only"))
    add("magic_only.png", png[:8], _expect(*_BROKEN, description="PNG signature only"))
    add("cut_in_ihdr.png", png[:20], _expect(*_BROKEN, description="PNG cut inside IHDR"))
    add("cut_after_header.jpg", _jpeg_headers(jpeg),
        _expect("truncated", description="JPEG cut right after the SOS header",
                probe_ok=True))
    add("cut_after_header.png", _png_headers(png),
        _expect("truncated", description="PNG cut right after the IDAT chunk header",
                probe_ok=True))
    add("truncated_half.jpg", jpeg[: len(jpeg) // 2],
        _expect("truncated", description="JPEG cut in the scan", probe_ok=True))
    add("truncated_half.png", png[: len(png) // 2],
        _expect(*_BROKEN, description="PNG cut in IDAT", probe_ok=True))
    still = pillow_bytes(PILImage.fromarray(rgb).quantize(colors=16), "GIF")
    add("truncated.gif", still[: len(still) // 2],
        _expect(*_BROKEN, description="single-frame GIF cut in its image data",
                probe_ok=True))
    add("truncated.webp", webp[: len(webp) // 2], _expect(*_BROKEN, description="WebP cut"))
    add("truncated.tif", tiff[: len(tiff) // 2],
        _expect("truncated", description="TIFF cut in the strips", probe_ok=True))
    # Decompression bombs: tiny files declaring huge images.
    add("bomb_20000.png", _png_bomb(20000, 20000),
        _expect("oversize", description="20000x20000 1-bit PNG of zeros", probe_ok=True))
    add("bomb_60000.tif", _tiff_bomb(60000, 60000),
        _expect("oversize", description="TIFF header declaring 60000x60000", probe_ok=True))
    add("bomb_screen.gif", _gif_huge_screen(),
        _expect("oversize", description="GIF with a 65535x65535 logical screen",
                probe_ok=True))
    # Malformed headers.
    add("zero_width.png", _png_with_ihdr(png, width=0),
        _expect("corrupt", "truncated", "unidentified", description="IHDR width 0"))
    add("bad_crc.png", _png_bad_ihdr_crc(png), _expect(*_BROKEN, description="IHDR CRC wrong"))
    # Valid but unusual: must read, with the right layout.
    add("png_named.jpg", png, _expect(OK, description="PNG content, .jpg name", shape=shape,
                                      dtype="uint8", probe_ok=True))
    add("trailing_garbage.jpg", jpeg + rng.bytes(300),
        _expect(OK, description="JPEG with bytes after EOI", shape=shape, probe_ok=True))
    add("animated.gif", gif, _expect(OK, description="3-frame GIF", shape=(64, 80, 3), frames=3,
                                     probe_ok=True))
    add("cmyk.jpg", pillow_bytes(PILImage.fromarray(rgb).convert("CMYK"), "JPEG"),
        _expect(OK, description="CMYK JPEG", shape=shape, dtype="uint8", probe_ok=True))
    add("gray16.png", _png16(photo_like(40, 50, seed=seed + 2, channels=1, dtype=np.uint16)),
        _expect(OK, description="16-bit grey PNG", shape=(40, 50, 1), dtype="uint16",
                probe_ok=True))
    rgba16 = _png16(photo_like(40, 50, seed=seed + 3, channels=4, dtype=np.uint16))
    add("rgba16.png", rgba16,
        _expect(OK, description="16-bit RGBA PNG", shape=(40, 50, 4), dtype="uint16",
                probe_ok=True))
    add("truncated_half16.png", rgba16[: len(rgba16) // 2],
        _expect(*_BROKEN, description="16-bit RGBA PNG cut in IDAT", probe_ok=True))
    palette = PILImage.fromarray(rgb).quantize(colors=16, method=PILImage.Quantize.MEDIANCUT)
    add("palette_transparent.png", pillow_bytes(palette, "PNG", transparency=0),
        _expect(OK, description="palette PNG, index 0 transparent", shape=(96, 128, 4),
                probe_ok=True))
    add("one_bit.png", pillow_bytes(PILImage.fromarray(rgb[:, :, 0] > 128), "PNG"),
        _expect(OK, description="1-bit PNG", shape=(96, 128, 1), dtype="uint8", probe_ok=True))
    add("small.bmp", pillow_bytes(PILImage.fromarray(rgb), "BMP"),
        _expect(OK, description="BMP", shape=shape, probe_ok=True))
    for value in (0, 9):
        add(f"orientation_{value}.jpg", insert_exif(jpeg, exif_block(value)),
            _expect(OK, description=f"EXIF orientation {value} (invalid)", shape=shape,
                    probe_ok=True))
    add("exif_truncated.jpg", insert_exif(jpeg, truncated_exif_block()),
        _expect(OK, description="EXIF block cut in its IFD", shape=shape, probe_ok=True))
    add("exif_garbage.jpg", insert_exif(jpeg, garbage_exif_block(seed)),
        _expect(OK, description="EXIF block of garbage", shape=shape, probe_ok=True))
    # Seeded mutations of valid files.
    bases = [("jpg", jpeg), ("png", png), ("gif", gif), ("tif", tiff), ("webp", webp)]
    for index in range(MUTATIONS):
        suffix, base = bases[index % len(bases)]
        if index % 2 == 0:
            data = _flip_bytes(base, rng)
            add(f"mutant_{index:02d}_flip.{suffix}", data,
                _expect(*_ANY, description=f"bytes flipped in a valid {suffix}"))
        else:
            cut = int(len(base) * rng.uniform(0.3, 0.9))
            # An animated GIF cut in a later frame still has an intact first frame.
            allowed = _BROKEN | {OK} if suffix == "gif" else _BROKEN
            add(f"mutant_{index:02d}_cut.{suffix}", base[:cut],
                _expect(*allowed, description=f"valid {suffix} cut at byte {cut}"))
    return entries


def _flip_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    """Overwrite 1..8 random bytes after the first 16 (the magic stays intact)."""
    mutated = bytearray(data)
    count = int(rng.integers(1, 9))
    for position in rng.integers(16, len(data), count):
        mutated[int(position)] = int(rng.integers(0, 256))
    return bytes(mutated)


def _animated_gif(seed: int) -> bytes:
    frames = [
        PILImage.fromarray(photo_like(64, 80, seed=seed + 30 + i)).quantize(
            colors=16, method=PILImage.Quantize.MEDIANCUT
        )
        for i in range(3)
    ]
    return pillow_bytes(
        frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0
    )


def _tiff_bytes(rgb: np.ndarray) -> bytes:
    import io

    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, rgb, photometric="rgb", metadata=None, rowsperstrip=16)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_headers(png: bytes) -> bytes:
    """The PNG up to and including the first IDAT chunk's length and type."""
    return png[: png.index(b"IDAT") + 4]


def _jpeg_headers(jpeg: bytes) -> bytes:
    """The JPEG up to and including the SOS segment (no entropy-coded data)."""
    start = jpeg.index(b"\xff\xda")
    (length,) = struct.unpack(">H", jpeg[start + 2 : start + 4])
    return jpeg[: start + 2 + length]


def _png_with_ihdr(png: bytes, *, width: int) -> bytes:
    ihdr = bytearray(png[16:29])
    ihdr[0:4] = struct.pack(">I", width)
    return png[:8] + _png_chunk(b"IHDR", bytes(ihdr)) + png[33:]


def _png_bad_ihdr_crc(png: bytes) -> bytes:
    data = bytearray(png)
    data[29] ^= 0xFF
    return bytes(data)


@functools.lru_cache(maxsize=4)
def _png_bomb(width: int, height: int) -> bytes:
    """A real 1-bit PNG of zeros: ``width x height`` pixels in a few tens of KB."""
    row = bytes(1 + (width + 7) // 8)  # filter byte 0 + packed zero bits
    compressor = zlib.compressobj(9)
    block = row * 256
    parts = [compressor.compress(block) for _ in range(height // 256)]
    parts.append(compressor.compress(row * (height % 256)))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def _tiff_bomb(width: int, height: int) -> bytes:
    """A little-endian TIFF header + IFD declaring one huge uncompressed 8-bit strip."""
    data_offset = 8 + 2 + 9 * 12 + 4
    entries = [
        (256, 4, 1, width),  # ImageWidth, LONG
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample, SHORT
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: min-is-black
        (273, 4, 1, data_offset),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, min(width * height, 0xFFFFFFFF)),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<H", value) + b"\x00\x00" if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(64)


def _gif_huge_screen() -> bytes:
    """A GIF whose logical screen is 65535 x 65535 holding a 1 x 1 image."""
    header = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0)
    palette = b"\x00\x00\x00\xff\xff\xff"
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
    data = b"\x02\x02\x44\x01\x00"  # LZW min code size 2, one sub-block, terminator
    return header + palette + descriptor + data + b"\x3b"
