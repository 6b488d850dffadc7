"""A deterministic sample corpus: the images a dagflow demo, test or benchmark runs on.

:func:`make_sample_corpus` writes, under one directory,

* ``orientation/orient_{1..8}.jpg`` -- the same upright picture (red block top-left,
  green top-right, blue bottom-left) stored under each EXIF orientation, so a correct
  reader shows eight identical images;
* ``photos/photo_NNN_WxH.jpg`` -- ``n_photos`` photo-like JPEGs of a few sizes
  (640x480 to 1600x1200, some portrait);
* ``formats/`` -- RGBA PNG, palette PNG (plain and with transparency), grey PNG and
  JPEG, 16-bit RGB TIFF, 16-bit grey and RGB PNG, WebP, animated GIF, CMYK JPEG, and a
  PNG named ``.jpg``;
* ``corrupt/`` -- a truncated JPEG, random bytes named ``.jpg`` and a zero-byte PNG.

The same seed gives byte-identical files on every call (no timestamps are written).

This module owns the sample corpus; hostile files live in
:mod:`dagflow.testing.badcorpus`.
"""

from __future__ import annotations

import io
import logging
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from dagflow.image import Image
from dagflow.io.atomic import atomic_write
from dagflow.io.write import write_image
from dagflow.testing.exif import jpeg_with_orientation
from dagflow.testing.synthetic import asymmetric_pattern, photo_like

__all__ = ["PHOTO_SIZES", "make_sample_corpus", "pillow_bytes"]

logger = logging.getLogger(__name__)

#: ``(width, height)`` of the plain photos, used in turn.
PHOTO_SIZES = (
    (640, 480),
    (800, 600),
    (1024, 768),
    (480, 640),
    (1280, 960),
    (1600, 1200),
    (768, 1024),
)

#: Upright size ``(height, width)`` of the orientation pictures.
ORIENTATION_SHAPE = (240, 320)


def pillow_bytes(image: PILImage.Image, fmt: str, **options: object) -> bytes:
    """Encode a Pillow image to bytes (fixtures need formats dagflow does not write)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def make_sample_corpus(
    directory: str | PathLike[str], *, n_photos: int = 24, seed: int = 0
) -> list[Path]:
    """Write the sample corpus under ``directory``.

    Parameters
    ----------
    directory
        Where to write; created if missing. Existing files of the same names are
        replaced.
    n_photos
        How many plain photo-like JPEGs to write under ``photos/``.
    seed
        Same seed, byte-identical files.

    Returns
    -------
    list of pathlib.Path
        Every file written, sorted (including the deliberately corrupt ones). No two
        share a name without extension: a workflow saving them all in one format keeps
        every one (a folder that does needs save's ``name`` template).
    """
    root = Path(directory)
    files: dict[str, bytes] = {}
    upright = asymmetric_pattern(*ORIENTATION_SHAPE, seed=seed)
    for orientation in range(1, 9):
        files[f"orientation/orient_{orientation}.jpg"] = jpeg_with_orientation(
            upright, orientation, quality=92, upright=True
        )
    for index in range(n_photos):
        width, height = PHOTO_SIZES[index % len(PHOTO_SIZES)]
        pixels = photo_like(height, width, seed=seed * 100_003 + index + 1)
        name = f"photos/photo_{index:03d}_{width}x{height}.jpg"
        files[name] = pillow_bytes(PILImage.fromarray(pixels), "JPEG", quality=88)
    files.update(_format_samples(seed))
    files.update(_corrupt_samples(files["orientation/orient_1.jpg"], seed))
    written = []
    for name, data in sorted(files.items()):
        written.append(atomic_write(root / name, data))
    written.extend(_tiff_samples(root, seed))
    logger.debug("wrote %d sample files under %s", len(written), root)
    return sorted(written)


def _format_samples(seed: int) -> dict[str, bytes]:
    rgb = photo_like(300, 400, seed=seed + 7)
    rgba = photo_like(300, 400, seed=seed + 8, channels=4)
    gray = photo_like(300, 400, seed=seed + 9, channels=1)[:, :, 0]
    palette = PILImage.fromarray(rgb).quantize(colors=64, method=PILImage.Quantize.MEDIANCUT)
    alpha_table = bytes([0, 64, 128] + [255] * 61)
    frames = [
        PILImage.fromarray(photo_like(120, 160, seed=seed + 20 + i)).quantize(
            colors=32, method=PILImage.Quantize.MEDIANCUT
        )
        for i in range(3)
    ]
    return {
        "formats/alpha.png": pillow_bytes(PILImage.fromarray(rgba), "PNG"),
        "formats/palette.png": pillow_bytes(palette, "PNG"),
        "formats/palette_transparent.png": pillow_bytes(palette, "PNG", transparency=alpha_table),
        "formats/gray8.png": pillow_bytes(PILImage.fromarray(gray), "PNG"),
        "formats/gray.jpg": pillow_bytes(PILImage.fromarray(gray), "JPEG", quality=90),
        "formats/photo.webp": pillow_bytes(PILImage.fromarray(rgb), "WEBP", quality=85),
        "formats/cmyk.jpg": pillow_bytes(PILImage.fromarray(rgb).convert("CMYK"), "JPEG"),
        "formats/animated.gif": pillow_bytes(
            frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0
        ),
        "formats/png_content.jpg": pillow_bytes(PILImage.fromarray(rgb), "PNG"),
    }


def _tiff_samples(root: Path, seed: int) -> list[Path]:
    rgb16 = photo_like(256, 320, seed=seed + 11, dtype=np.uint16)
    gray16 = photo_like(256, 320, seed=seed + 12, channels=1, dtype=np.uint16)
    return [
        Path(write_image(Image(rgb16), root / "formats/rgb16_zlib.tif", compression="zlib")),
        Path(write_image(Image(rgb16), root / "formats/rgb16.png")),
        Path(write_image(Image(gray16), root / "formats/gray16.png")),
    ]


def _corrupt_samples(jpeg: bytes, seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed + 13)
    random_bytes = b"\x00" + rng.bytes(4095)
    return {
        "corrupt/truncated.jpg": jpeg[: len(jpeg) // 2],
        "corrupt/random_bytes.jpg": random_bytes,
        "corrupt/empty.png": b"",
    }
