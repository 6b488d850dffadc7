"""CIE L*a*b* TIFF samples to sRGB, for the reader.

A TIFF with photometric interpretation CIELab (8) or ICCLab (9) stores ``L*`` unsigned
(0..255 or 0..65535 for 0..100) and ``a*``, ``b*`` as signed integers (CIELab) or with an
offset of half the range (ICCLab), relative to the white point of its ``WhitePoint`` tag,
D50 when absent (libtiff's default, after Adobe's TIFF notes). :func:`lab_to_rgb` turns
them into sRGB of the same bit depth: ``L*a*b*`` to ``XYZ`` under that white, the white
adapted to D65 (Bradford), the sRGB matrix and transfer curve, rounded to nearest. Every
step is an elementwise float64 operation in a fixed order (the matrices are written out,
no BLAS), so the result does not depend on the CPU.

This module owns the colour arithmetic only; it opens no file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["CIELAB", "ICCLAB", "lab_to_rgb"]

#: TIFF photometric interpretations of L*a*b* samples.
CIELAB, ICCLAB = 8, 9

#: D50 and D65 white points, ``XYZ`` with ``Y = 1``.
_D50 = (0.96422, 1.0, 0.82521)
_D65 = (0.95047, 1.0, 1.08883)
_BRADFORD = ((0.8951, 0.2664, -0.1614),
             (-0.7502, 1.7135, 0.0367),
             (0.0389, -0.0685, 1.0296))
#: ``XYZ`` (D65) to linear sRGB (IEC 61966-2-1).
_XYZ_TO_SRGB = ((3.2404542, -1.5371385, -0.4985314),
                (-0.9692660, 1.8760108, 0.0415560),
                (0.0556434, -0.2040259, 1.0572252))
_EPSILON = 6.0 / 29.0

Matrix = tuple[tuple[float, float, float], ...]


def _product(a: Matrix, b: Matrix) -> Matrix:
    """``a @ b`` of 3x3 matrices in Python floats (a fixed order, no BLAS)."""
    return tuple(tuple(a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j]
                       for j in range(3)) for i in range(3))


def _inverse(m: Matrix) -> Matrix:
    """The inverse of a 3x3 matrix by its adjugate, in Python floats."""
    (a, b, c), (d, e, f), (g, h, i) = m
    cof = ((e * i - f * h, c * h - b * i, b * f - c * e),
           (f * g - d * i, a * i - c * g, c * d - a * f),
           (d * h - e * g, b * g - a * h, a * e - b * d))
    det = a * cof[0][0] + b * cof[1][0] + c * cof[2][0]
    return tuple(tuple(value / det for value in row) for row in cof)


def _adaptation(white: Sequence[float]) -> Matrix:
    """Bradford's chromatic adaptation from ``white`` to D65."""
    def cone(xyz: Sequence[float]) -> list[float]:
        return [sum(_BRADFORD[i][k] * xyz[k] for k in range(3)) for i in range(3)]

    source, target = cone(white), cone(_D65)
    scale = tuple(tuple(target[i] / source[i] if i == j else 0.0 for j in range(3))
                  for i in range(3))
    return _product(_product(_inverse(_BRADFORD), scale), _BRADFORD)


def _white_xyz(whitepoint: Sequence[float] | None) -> tuple[float, float, float]:
    """The ``XYZ`` (Y = 1) of a TIFF ``WhitePoint`` chromaticity ``(x, y)``; D50 if none."""
    if whitepoint is None or len(whitepoint) != 2 or not 0 < float(whitepoint[1]) <= 1:
        return _D50
    x, y = float(whitepoint[0]), float(whitepoint[1])
    return x / y, 1.0, (1.0 - x - y) / y


def _matrix_apply(matrix: Matrix, planes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``matrix @ planes`` written out: three sums of three products each, in order."""
    return [matrix[i][0] * planes[0] + matrix[i][1] * planes[1] + matrix[i][2] * planes[2]
            for i in range(3)]


def _finv(t: np.ndarray) -> np.ndarray:
    return np.where(t > _EPSILON, t * t * t, 3 * _EPSILON * _EPSILON * (t - 4.0 / 29.0))


def _encode_srgb(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    curve = 1.055 * np.power(linear, 1.0 / 2.4) - 0.055
    return np.where(linear <= 0.0031308, 12.92 * linear, curve)


def lab_to_rgb(samples: np.ndarray, photometric: int,
               whitepoint: Sequence[float] | None = None) -> np.ndarray:
    """sRGB pixels from TIFF L*a*b* samples ``(y, x, 3 + extra)``, extra samples kept.

    Parameters
    ----------
    samples
        ``uint8`` or ``uint16`` samples as stored: ``L*``, ``a*``, ``b*`` then any extra
        (alpha) samples.
    photometric
        :data:`CIELAB` (``a*``, ``b*`` two's complement) or :data:`ICCLAB` (offset by
        half the range).
    whitepoint
        The ``WhitePoint`` tag's ``(x, y)``; D50 when ``None``.

    Returns
    -------
    numpy.ndarray
        RGB (then the extra samples) in ``samples``' dtype.

    Examples
    --------
    >>> lab = np.array([[[255, 0, 0], [0, 0, 0]]], np.uint8)  # L* 100 and 0, neutral
    >>> lab_to_rgb(lab, CIELAB).tolist()
    [[[255, 255, 255], [0, 0, 0]]]
    """
    top = float(np.iinfo(samples.dtype).max)
    signed = np.int8 if samples.dtype == np.uint8 else np.int16
    light = samples[..., 0].astype(np.float64) * (100.0 / top)
    if photometric == CIELAB:
        a, b = (samples[..., i].view(signed).astype(np.float64) for i in (1, 2))
    else:
        half = (top + 1) / 2
        a, b = (samples[..., i].astype(np.float64) - half for i in (1, 2))
    if samples.dtype == np.uint16:  # a* and b* in 1/256 units
        a, b = a / 256.0, b / 256.0
    fy = (light + 16.0) / 116.0
    white = _white_xyz(whitepoint)
    xyz = [white[0] * _finv(fy + a / 500.0), white[1] * _finv(fy),
           white[2] * _finv(fy - b / 200.0)]
    linear = _matrix_apply(_product(_XYZ_TO_SRGB, _adaptation(white)), xyz)
    rgb = np.stack([np.rint(_encode_srgb(plane) * top) for plane in linear], axis=-1)
    return np.concatenate([rgb.astype(samples.dtype), samples[..., 3:]], axis=-1)
