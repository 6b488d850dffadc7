"""The thumbnail pipeline, written the ways people write it, one image per call.

Every function takes ``(input path, output directory)``, writes one JPEG and returns
its path. They are module-level functions so that process pools can pickle them.

* :func:`dagflow_kernels` -- the op functions dagflow's nodes call, with the parameters
  dagflow resolves for the workflow (:func:`thumbnail_workflow`), load's ``reduce_to``
  included: what a ``ProcessPoolExecutor`` script gets by importing dagflow's ops;
* :func:`naive_pillow` -- full decode, ``exif_transpose``, ``resize`` (Lanczos),
  ``GaussianBlur``, save;
* :func:`vips_thumbnail` -- ``pyvips.Image.thumbnail`` (shrink-on-load, auto-rotate),
  ``gaussblur``, save: what fast tools do;
* :func:`reference_thumbnail` -- the slow, exact reference used to check outputs:
  full decode, orientation, Lanczos without ``reducing_gap``, float64 Gaussian.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

__all__ = [
    "LONG_SIDE",
    "QUALITY",
    "SIGMA",
    "dagflow_kernels",
    "naive_pillow",
    "reference_thumbnail",
    "thumbnail_workflow",
    "vips_thumbnail",
]

LONG_SIDE = 512
SIGMA = 1.5
QUALITY = 85


def thumbnail_workflow() -> Any:
    """load (auto-orient) -> resize to a 512 px long side -> gaussian 1.5 -> JPEG 85."""
    from dagflow import Node, Workflow

    return Workflow("thumbnails", [
        Node("load", "load", {"auto_orient": True}),
        Node("small", "resize", {"long_side": LONG_SIDE}, after=["load"]),
        Node("blur", "gaussian", {"sigma": SIGMA}, after=["small"]),
        Node("save", "save", {"format": "jpeg", "quality": QUALITY}, after=["blur"]),
    ])


@lru_cache(maxsize=1)
def _resolved() -> list[tuple[str, Any, dict[str, Any]]]:
    """The workflow's nodes as dagflow resolves them: (kind, func, params)."""
    from dagflow.compile import node_tasks

    out = []
    for task in node_tasks(thumbnail_workflow().validate()).values():
        params = {k: v for k, v in task.params.items() if k != "subdir"}
        out.append((task.kind, task.op_spec.func, params))
    return out


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def dagflow_kernels(path: str, out_dir: str) -> str:
    """One image through dagflow's own op functions, exactly as its nodes call them."""
    value: Any = None
    for kind, func, params in _resolved():
        if kind == "source":
            value = func(os.fspath(path), **params)
        elif kind == "sink":
            return func(value, os.path.join(out_dir, _stem(path)), **params)
        else:
            value = func(value, **params)
    raise AssertionError("the thumbnail workflow ends in a sink")


def naive_pillow(path: str, out_dir: str) -> str:
    """The pipeline most scripts start with: full decode at every step."""
    from PIL import Image, ImageFilter, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        w, h = im.size
        scale = LONG_SIDE / max(w, h)
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                       Image.Resampling.LANCZOS)
        im = im.filter(ImageFilter.GaussianBlur(SIGMA))
        dest = os.path.join(out_dir, _stem(path) + ".jpg")
        im.save(dest, format="JPEG", quality=QUALITY)
    return dest


def _vips() -> Any:
    import pyvips

    if not getattr(_vips, "configured", False):
        pyvips.cache_set_max(0)  # each file is read once: the cache only costs memory
        _vips.configured = True  # type: ignore[attr-defined]
    return pyvips


def vips_thumbnail(path: str, out_dir: str) -> str:
    """libvips' thumbnail (shrink-on-load, auto-rotate), a Gaussian blur, JPEG 85."""
    pyvips = _vips()
    image = pyvips.Image.thumbnail(os.fspath(path), LONG_SIDE)
    image = image.gaussblur(SIGMA)
    dest = os.path.join(out_dir, _stem(path) + ".jpg")
    image.write_to_file(dest, Q=QUALITY)
    return dest


def reference_thumbnail(path: str) -> Any:
    """The exact thumbnail as ``(y, x, c)`` uint8: full decode, orientation, pure Lanczos,
    float64 Gaussian (for checking the fast paths, not for timing)."""
    import numpy as np
    from scipy import ndimage

    from dagflow.io import read_image
    from dagflow.ops.geometry import resize_array, resize_shape

    img = read_image(path)
    w, h = resize_shape(img.width, img.height, long_side=LONG_SIDE)
    small = resize_array(np.asarray(img.data), w, h, reducing_gap=None)
    blurred = ndimage.gaussian_filter(small.astype(np.float64), SIGMA, mode="reflect",
                                      axes=(0, 1))
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def psnr(a: Any, b: Any) -> float:
    """Peak signal-to-noise ratio of two uint8 images of the same shape, in dB."""
    import numpy as np

    if a.shape != b.shape:
        return float("nan")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
