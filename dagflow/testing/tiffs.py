"""A corpus of TIFF layouts and codecs, each with the pixels a reader must return.

:func:`tiff_corpus_files` writes TIFFs the way the tools that make them do -- Pillow
(libtiff) and tifffile -- in the codecs and sample layouts found in the wild: LZW,
Deflate with a predictor, ZSTD, LZMA, PackBits, JPEG, CCITT Group 3 and 4 and
modified Huffman, 2-, 4- and 12-bit samples, min-is-white, 4-bit palettes, signed
integers, floats, tiles, CIE L*a*b*. Each comes with the array :func:`~dagflow.io.
read_image` must return, derived from what was written (the source pixels for
lossless codecs; Pillow's own decode where the codec is lossy; the documented scaling
for 2- and 4-bit samples; published sRGB values for L*a*b*), so a reader that gets any
of them wrong fails.

This module owns the TIFF corpus; hostile files live in
:mod:`dagflow.testing.badcorpus`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from dagflow.testing.synthetic import photo_like

__all__ = ["TiffCase", "tiff_corpus_files", "write_tiff_corpus"]


@dataclass(frozen=True)
class TiffCase:
    """One TIFF of the corpus: its bytes, what reading it must give, and its origin.

    ``expected`` is ``(y, x, c)`` in the dtype the reader returns; ``tolerance`` is the
    largest difference allowed (0 but for L*a*b*, whose expected values are published
    colours rather than the file's own);
    ``lazy`` says whether :func:`dagflow.open_image` reads it lazily too (the others it
    refuses as ``unsupported_mode``: they are read whole).
    """

    data: bytes
    expected: np.ndarray
    description: str
    tolerance: float = 0
    lazy: bool = False


def _tifffile(array: np.ndarray, **options: object) -> bytes:
    import tifffile

    out = io.BytesIO()
    tifffile.imwrite(out, array, metadata=None, **options)
    return out.getvalue()


def _pillow(image: PILImage.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format="TIFF", **options)
    return out.getvalue()


def _pillow_decode(data: bytes) -> np.ndarray:
    with PILImage.open(io.BytesIO(data)) as im:
        pixels = np.asarray(im.convert("L") if im.mode == "1" else im)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _yxc(array: np.ndarray) -> np.ndarray:
    return array[:, :, None] if array.ndim == 2 else array


def tiff_corpus_files(seed: int = 0) -> dict[str, TiffCase]:
    """The corpus as ``{file name: TiffCase}``, in memory; deterministic for a seed."""
    rgb = photo_like(48, 64, seed=seed)
    rgba = photo_like(48, 64, seed=seed + 1, channels=4)
    grey = rgb[:, :, 0]
    grey16 = photo_like(48, 64, seed=seed + 2, channels=1, dtype=np.uint16)[:, :, 0]
    rgb16 = photo_like(48, 64, seed=seed + 3, dtype=np.uint16)
    bits = grey > 128
    rng = np.random.default_rng(seed)
    cases: dict[str, TiffCase] = {}

    def lossless(name: str, array: np.ndarray, write: Callable[[], bytes], what: str,
                 lazy: bool = False) -> None:
        cases[name] = TiffCase(write(), _yxc(array), what, lazy=lazy)

    lossless("lzw_rgb.tif", rgb, lambda: _tifffile(rgb, photometric="rgb", compression="lzw",
                                                   predictor=True),
             "LZW with a horizontal predictor (tifffile)", lazy=True)
    lossless("lzw_rgba_pillow.tif", rgba,
             lambda: _pillow(PILImage.fromarray(rgba), compression="tiff_lzw"),
             "LZW RGBA (Pillow/libtiff)", lazy=True)
    lossless("lzw_grey16_pillow.tif", grey16,
             lambda: _pillow(PILImage.fromarray(grey16), compression="tiff_lzw"),
             "LZW 16-bit grey (Pillow/libtiff)", lazy=True)
    lossless("deflate_predictor16.tif", rgb16,
             lambda: _tifffile(rgb16, photometric="rgb", compression="zlib", predictor=True),
             "Deflate, 16-bit RGB, horizontal predictor", lazy=True)
    lossless("zstd_tiled.tif", rgb, lambda: _tifffile(rgb, photometric="rgb",
                                                      compression="zstd", tile=(16, 16)),
             "ZSTD, 16x16 tiles", lazy=True)
    lossless("lzma.tif", rgb16, lambda: _tifffile(rgb16, photometric="rgb", compression="lzma"),
             "LZMA, 16-bit RGB", lazy=True)
    lossless("packbits_pillow.tif", rgb,
             lambda: _pillow(PILImage.fromarray(rgb), compression="packbits"),
             "PackBits RGB (Pillow/libtiff)", lazy=True)
    floats = rgb.astype(np.float32) / 255
    lossless("float_predictor.tif", floats,
             lambda: _tifffile(floats, photometric="rgb", compression="zlib", predictor=3),
             "32-bit float RGB, floating-point predictor", lazy=True)
    for name, codec in (("ccitt_g4.tif", "group4"), ("ccitt_g3.tif", "group3"),
                        ("ccitt_rle.tif", "tiff_ccitt")):
        lossless(name, bits.astype(np.uint8) * 255,
                 lambda codec=codec: _pillow(PILImage.fromarray(bits), compression=codec),
                 f"bilevel, CCITT {codec} (Pillow/libtiff)")
    two = rng.integers(0, 4, grey.shape, dtype=np.uint8)
    lossless("bits2.tif", two * 85, lambda: _tifffile(two, photometric="minisblack",
                                                      bitspersample=2),
             "2-bit grey: scaled to 8 bits (x85), as Pillow reads it")
    four = rng.integers(0, 16, grey.shape, dtype=np.uint8)
    lossless("bits4.tif", four * 17, lambda: _tifffile(four, photometric="minisblack",
                                                       bitspersample=4),
             "4-bit grey: scaled to 8 bits (x17), as Pillow reads it")
    lossless("bits4_miniswhite.tif", (15 - four) * 17,
             lambda: _tifffile(four, photometric="miniswhite", bitspersample=4),
             "4-bit min-is-white grey: inverted, then scaled")
    twelve = rng.integers(0, 4096, grey.shape, dtype=np.uint16)
    lossless("bits12.tif", twelve, lambda: _tifffile(twelve, photometric="minisblack",
                                                     bitspersample=12),
             "12-bit grey: the stored values in 16 bits, as Pillow reads them")
    colormap = rng.integers(0, 256, (3, 256), dtype=np.uint16) * 257
    lossless("palette4.tif", np.moveaxis(colormap[:, four] // 257, 0, -1).astype(np.uint8),
             lambda: _tifffile(four, photometric="palette", bitspersample=4,
                               colormap=colormap),
             "4-bit palette: looked up in its 16-bit colour map")
    for dtype, scale in ((np.int8, 1), (np.int16, 200), (np.int32, 70_000)):
        signed = ((grey.astype(np.int64) - 128) * scale).astype(dtype)
        lossless(f"signed_{np.dtype(dtype).name}.tif", signed,
                 lambda signed=signed: _tifffile(signed, photometric="minisblack",
                                                 compression="zlib"),
                 f"signed {np.dtype(dtype).name} grey, negative values kept", lazy=True)
    jpeg = _tifffile(rgb, photometric="rgb", compression="jpeg", compressionargs={"level": 90})
    cases["jpeg_rgb.tif"] = TiffCase(jpeg, _pillow_decode(jpeg), "JPEG RGB (tifffile), as "
                                     "Pillow/libtiff decode it (the same libjpeg-turbo)",
                                     lazy=True)
    ycbcr = _pillow(PILImage.fromarray(rgb), compression="jpeg", quality=90)
    cases["jpeg_ycbcr_pillow.tif"] = TiffCase(ycbcr, _pillow_decode(ycbcr),
                                              "JPEG YCbCr (Pillow/libtiff)", lazy=True)
    lab = np.zeros((2, 3, 3), np.uint8)  # sRGB white, black, mid grey, red, green, blue
    for index, (light, a, b) in enumerate([(100, 0, 0), (0, 0, 0), (53.59, 0, 0),
                                           (54.29, 80.80, 69.89), (87.82, -79.29, 80.99),
                                           (29.57, 68.30, -112.03)]):
        lab[index // 3, index % 3] = (round(light * 2.55), round(a) & 255, round(b) & 255)
    srgb = np.array([[[255, 255, 255], [0, 0, 0], [128, 128, 128]],
                     [[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    # 8-bit L*a*b* has steps of 0.39 in L* and 1 in a*, b*: at the gamut's edge
    # (saturated green) that moves sRGB by up to 12 levels
    cases["cielab.tif"] = TiffCase(_tifffile(lab, photometric="cielab"), srgb,
                                   "8-bit CIE L*a*b* (D50) of sRGB white, black, grey and "
                                   "primaries (Photoshop's values)", tolerance=12)
    icc = lab.copy()
    icc[..., 1:] = (lab[..., 1:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    cases["icclab.tif"] = TiffCase(_tifffile(icc, photometric=9), srgb,
                                   "8-bit ICC L*a*b* (a*, b* offset by 128)", tolerance=12)
    lab16 = np.zeros((2, 3, 3), np.uint16)
    for index, (light, a, b) in enumerate([(100, 0, 0), (0, 0, 0), (53.59, 0, 0),
                                           (54.29, 80.80, 69.89), (87.82, -79.29, 80.99),
                                           (29.57, 68.30, -112.03)]):
        lab16[index // 3, index % 3] = (round(light * 655.35), round(a * 256) & 0xFFFF,
                                        round(b * 256) & 0xFFFF)
    cases["cielab16.tif"] = TiffCase(_tifffile(lab16, photometric="cielab"),
                                     srgb.astype(np.uint16) * 257,
                                     "16-bit CIE L*a*b*: within an 8-bit level of sRGB",
                                     tolerance=257)
    return cases


def write_tiff_corpus(directory: str | PathLike[str], seed: int = 0) -> dict[str, Path]:
    """Write :func:`tiff_corpus_files` into ``directory``; ``{name: path}``."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, case in tiff_corpus_files(seed).items():
        paths[name] = root / name
        paths[name].write_bytes(case.data)
    return paths
