"""The thumbnail pipeline, written the ways people write it, one image per call.

Every function takes ``(input path, output directory)``, writes one JPEG and returns
its path. They are module-level functions so that process pools can pickle them. Each
does what the workload asks -- auto-orient, a 512 px long side, Gaussian sigma 1.5,
JPEG quality 85 -- with the tools of one library, the way that library's users write it:

* :func:`opencv_reduced` -- ``cv2.imread(IMREAD_REDUCED_COLOR_4)`` (libjpeg-turbo's
  1/4 DCT scale; OpenCV applies the EXIF orientation itself), ``cv2.resize``
  (``INTER_AREA``), ``cv2.GaussianBlur``, ``cv2.imwrite``;
* :func:`pillow_draft` -- ``draft()``, ``ImageOps.exif_transpose``, ``thumbnail``,
  ``ImageFilter.GaussianBlur``, ``save``;
* :func:`simplejpeg_opencv` -- ``simplejpeg.decode_jpeg`` at the smallest DCT scale
  that keeps 512 px, the orientation from Pillow's lazy EXIF read, ``cv2.resize``,
  ``cv2.GaussianBlur``, ``simplejpeg.encode_jpeg``;
* :func:`vips_thumbnail` -- ``pyvips.Image.thumbnail`` (shrink-on-load, auto-rotate),
  ``gaussblur``, save;
* :func:`dagflow_kernels` -- the op functions dagflow's nodes call, with the parameters
  dagflow resolves for the workflow (:func:`thumbnail_workflow`), load's ``reduce_to``
  included: the per-image work of a dagflow run without the framework
  (:func:`dagflow_chunk`: a chunk of them, made durable together as a sink task does);
* :func:`reference_thumbnail` -- the slow, exact reference used to check outputs:
  full decode, orientation, Lanczos without ``reducing_gap``, float64 Gaussian.

:func:`decode_only` is the per-core limit: the file read and the 1/4-scale decode,
nothing else. :func:`dagflow_stages` times each step of :func:`dagflow_chunk`.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache
from typing import Any

__all__ = [
    "LONG_SIDE",
    "QUALITY",
    "SIGMA",
    "dagflow_chunk",
    "dagflow_kernels",
    "dagflow_stages",
    "decode_only",
    "opencv_reduced",
    "opencv_stages",
    "pillow_draft",
    "reference_thumbnail",
    "resolve",
    "run_nodes",
    "simplejpeg_opencv",
    "single_threaded",
    "thumbnail_workflow",
    "vips_thumbnail",
]

LONG_SIDE = 512
SIGMA = 1.5
QUALITY = 85


def single_threaded() -> None:
    """Pool initializer: one thread in every native library of the process."""
    import cv2

    cv2.setNumThreads(1)


def thumbnail_workflow() -> Any:
    """load (auto-orient) -> resize to a 512 px long side -> gaussian 1.5 -> JPEG 85."""
    from dagflow import Node, Workflow

    return Workflow("thumbnails", [
        Node("load", "load", {"auto_orient": True}),
        Node("small", "resize", {"long_side": LONG_SIDE}, after=["load"]),
        Node("blur", "gaussian", {"sigma": SIGMA}, after=["small"]),
        Node("save", "save", {"format": "jpeg", "quality": QUALITY}, after=["blur"]),
    ])


def resolve(workflow: Any) -> list[tuple[str, str, Any, dict[str, Any]]]:
    """A workflow's nodes as dagflow resolves them: ``(node id, kind, func, params)``."""
    from dagflow.compile import node_tasks

    out = []
    for node_id, task in node_tasks(workflow.validate()).items():
        params = {k: v for k, v in task.params.items() if k != "subdir"}
        out.append((node_id, task.kind, task.op_spec.func, params))
    return out


def run_nodes(nodes: list[tuple[str, str, Any, dict[str, Any]]], path: str, out_dir: str,
              spent: dict[str, float] | None = None) -> str:
    """One image through resolved nodes, as a chain; with ``spent``, each node's CPU
    seconds are added to it (``load`` includes the file read and the orientation,
    ``save`` the encode and the atomic write)."""
    value: Any = None
    for node_id, kind, func, params in nodes:
        start = time.process_time()
        if kind == "source":
            value = func(os.fspath(path), **params)
        elif kind == "sink":
            value = func(value, os.path.join(out_dir, _stem(path)), **params)
        else:
            value = func(value, **params)
        if spent is not None:
            spent[node_id] = spent.get(node_id, 0.0) + time.process_time() - start
    return value


@lru_cache(maxsize=1)
def _resolved() -> list[tuple[str, str, Any, dict[str, Any]]]:
    return resolve(thumbnail_workflow())


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _dest(path: str, out_dir: str) -> str:
    return os.path.join(out_dir, _stem(path) + ".jpg")


def _target(width: int, height: int) -> tuple[int, int]:
    scale = LONG_SIDE / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def dagflow_kernels(path: str, out_dir: str) -> str:
    """One image through dagflow's own op functions, exactly as its nodes call them."""
    return run_nodes(_resolved(), path, out_dir)


def dagflow_chunk(paths: list[str], out_dir: str) -> int:
    """:func:`dagflow_kernels` over a chunk of images, their outputs made durable together
    at its end, as a dagflow sink task does (``deferred_sync``: one filesystem flush a
    chunk instead of two fsyncs an image)."""
    from dagflow.io.atomic import deferred_sync

    with deferred_sync():
        for path in paths:
            dagflow_kernels(path, out_dir)
    return len(paths)


def dagflow_stages(paths: list[str], out_dir: str) -> list[dict[str, float]]:
    """:func:`dagflow_chunk` with the CPU seconds of each node, per image: the chunk's
    outputs made durable together at its end, as a sink task does, that flush's CPU
    shared among the chunk's saves (what a save costs in a run)."""
    from dagflow.io.atomic import deferred_sync

    nodes = _resolved()
    sink = next(node_id for node_id, kind, _, _ in nodes if kind == "sink")
    samples: list[dict[str, float]] = []
    with deferred_sync():
        for path in paths:
            spent: dict[str, float] = {}
            run_nodes(nodes, path, out_dir, spent)
            samples.append(spent)
        start = time.process_time()
    flush = time.process_time() - start  # leaving the block flushed the files
    for spent in samples:
        spent[sink] += flush / len(samples)
    return samples


def opencv_reduced(path: str, out_dir: str) -> str:
    """OpenCV end to end: reduced decode (EXIF applied by imread), INTER_AREA, blur."""
    import cv2

    image = cv2.imread(path, cv2.IMREAD_REDUCED_COLOR_4)
    height, width = image.shape[:2]
    if max(width, height) > LONG_SIDE:
        image = cv2.resize(image, _target(width, height), interpolation=cv2.INTER_AREA)
    image = cv2.GaussianBlur(image, (0, 0), SIGMA)
    dest = _dest(path, out_dir)
    cv2.imwrite(dest, image, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    return dest


def opencv_stages(path: str, out_dir: str) -> dict[str, float]:
    """:func:`opencv_reduced` with the CPU seconds of each step."""
    import cv2

    spent: dict[str, float] = {}
    start = time.process_time()
    image = cv2.imread(path, cv2.IMREAD_REDUCED_COLOR_4)
    spent["decode"] = (now := time.process_time()) - start
    height, width = image.shape[:2]
    if max(width, height) > LONG_SIDE:
        image = cv2.resize(image, _target(width, height), interpolation=cv2.INTER_AREA)
    spent["resize"] = (then := time.process_time()) - now
    image = cv2.GaussianBlur(image, (0, 0), SIGMA)
    spent["blur"] = (now := time.process_time()) - then
    cv2.imwrite(_dest(path, out_dir), image, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    spent["encode"] = time.process_time() - now
    return spent


def pillow_draft(path: str, out_dir: str) -> str:
    """Pillow: draft (DCT scale), exif_transpose, thumbnail, GaussianBlur, save."""
    from PIL import Image, ImageFilter, ImageOps

    with Image.open(path) as im:
        im.draft("RGB", _target(*im.size))
        im = ImageOps.exif_transpose(im)
        im.thumbnail((LONG_SIDE, LONG_SIDE))
        im = im.filter(ImageFilter.GaussianBlur(SIGMA))
        dest = _dest(path, out_dir)
        im.save(dest, format="JPEG", quality=QUALITY)
    return dest


_ORIENT = {2: ("flip", 1), 3: ("rot", 2), 4: ("flip", 0), 5: ("transpose", None),
           6: ("rot", -1), 7: ("transverse", None), 8: ("rot", 1)}


def simplejpeg_opencv(path: str, out_dir: str) -> str:
    """simplejpeg's scaled decode, the EXIF orientation by hand, OpenCV's resize and blur,
    simplejpeg's encode."""
    import cv2
    import numpy as np
    import simplejpeg
    from PIL import Image

    with Image.open(path) as im:  # lazy: reads the header, for the orientation
        orientation = im.getexif().get(0x0112, 1)
    with open(path, "rb") as f:
        data = f.read()
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    small = _target(width, height)
    image = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=small[0],
                                   min_height=small[1])
    how, arg = _ORIENT.get(orientation, (None, None))
    if how == "flip":
        image = np.flip(image, arg)
    elif how == "rot":
        image = np.rot90(image, arg)
    elif how == "transpose":
        image = image.transpose(1, 0, 2)
    elif how == "transverse":
        image = np.rot90(image, 2).transpose(1, 0, 2)
    image = np.ascontiguousarray(image)
    height, width = image.shape[:2]
    if max(width, height) > LONG_SIDE:
        image = cv2.resize(image, _target(width, height), interpolation=cv2.INTER_AREA)
    image = cv2.GaussianBlur(image, (0, 0), SIGMA)
    dest = _dest(path, out_dir)
    with open(dest, "wb") as f:
        f.write(simplejpeg.encode_jpeg(image, quality=QUALITY, colorspace="RGB",
                                       colorsubsampling="420"))
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
    dest = _dest(path, out_dir)
    image.write_to_file(dest, Q=QUALITY)
    return dest


def decode_only(path: str, out_dir: str = "") -> str:
    """The per-core limit: read the file, decode it at 1/4 DCT scale (the fastest
    decoder measured here, libjpeg-turbo through simplejpeg), nothing else."""
    import simplejpeg

    with open(path, "rb") as f:
        data = f.read()
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=-(-width // 4),
                           min_height=-(-height // 4))
    return path


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
