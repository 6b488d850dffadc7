"""Aggregate ops, which reduce over all items: ``stats`` and ``contact_sheet``.

An aggregate runs in two steps (see :mod:`dagflow.ops.registry`): ``func(images, items,
**params)`` over one chunk returns a small partial, one row of plain data per image
(stored as Parquet between the two steps, see :mod:`dagflow.ops.partials`), and
``reduce(partials, dest, **params)`` combines every chunk's rows into one output
written atomically at ``dest`` plus the op's suffix. Items are dicts with at least
``item_id`` (int), ``path`` and ``rel`` (str). An item whose image is ``None`` (it failed
upstream) is skipped.

The pure parts are :func:`image_stats`, :func:`stats_table`, :func:`thumbnail`,
:func:`sheet_layout` and :func:`render_contact_sheet`.

This module imports no Dask; :mod:`dagflow.io` is imported only when a sheet is written.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

from dagflow.image import Image
from dagflow.ops._common import decoded_bytes, has_alpha, plane_pixels
from dagflow.ops.geometry import resize_array, resize_shape
from dagflow.ops.intensity import convert_dtype_array, convert_space_array
from dagflow.ops.registry import Param, register_op
from dagflow.ops.save import SUFFIXES

__all__ = [
    "STATS_SCHEMA",
    "contact_sheet",
    "contact_sheet_reduce",
    "image_stats",
    "render_contact_sheet",
    "sheet_layout",
    "stats",
    "stats_reduce",
    "stats_table",
    "thumbnail",
]

#: The columns every stats row has; per-channel columns ``min_<c>``, ``max_<c>``,
#: ``mean_<c>``, ``std_<c>`` (float64) follow for as many channels as the widest image.
STATS_SCHEMA = pa.schema([
    ("item_id", pa.int64()), ("path", pa.string()), ("rel", pa.string()),
    ("width", pa.int64()), ("height", pa.int64()), ("channels", pa.int64()),
    ("dtype", pa.string()), ("space", pa.string()),
    ("min", pa.float64()), ("max", pa.float64()), ("mean", pa.float64()),
    ("std", pa.float64()),
])
_PER_CHANNEL = ("min", "max", "mean", "std")
_LABEL_HEIGHT = 14


# --------------------------------------------------------------------------- atomic


@contextlib.contextmanager
def _local_atomic_path(path: str) -> Iterator[str]:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _atomic_path(path: str) -> contextlib.AbstractContextManager[str]:
    """A temporary path that replaces ``path`` on success (``dagflow.io.atomic`` if there)."""
    try:
        from dagflow.io.atomic import atomic_path
    except ImportError:
        return _local_atomic_path(path)
    return atomic_path(path)


def _present(images: Sequence[Image | None], items: Sequence[Mapping[str, Any]]
             ) -> Iterator[tuple[Image, Mapping[str, Any]]]:
    if len(images) != len(items):
        raise ValueError(f"{len(images)} images for {len(items)} items")
    for image, item in zip(images, items, strict=True):
        if image is not None:
            yield image, item


# --------------------------------------------------------------------------- stats


def image_stats(image: Image, item: Mapping[str, Any]) -> dict[str, Any]:
    """One stats row for ``image``: identity, shape, and min/max/mean/std.

    ``min``, ``max``, ``mean``, ``std`` are over all values (all channels); ``mean_<c>``
    etc. per channel, in the image's own units. ``std`` is the population standard
    deviation (numpy's default ``ddof=0``).
    """
    arr = np.asarray(image.data)
    row: dict[str, Any] = {
        "item_id": int(item["item_id"]), "path": str(item.get("path", "")),
        "rel": str(item.get("rel", "")), "width": image.width, "height": image.height,
        "channels": image.channels, "dtype": image.dtype.name,
        "space": image.meta.get("space"),
    }
    means, second_moments, mins, maxs = [], [], [], []
    for ch in range(image.channels):
        plane = arr[:, :, ch]
        mean = float(plane.mean(dtype=np.float64))
        std = float(plane.std(dtype=np.float64))
        lo, hi = float(plane.min()), float(plane.max())
        row.update({f"min_{ch}": lo, f"max_{ch}": hi, f"mean_{ch}": mean, f"std_{ch}": std})
        means.append(mean)
        second_moments.append(std * std + mean * mean)
        mins.append(lo)
        maxs.append(hi)
    mean_all = float(np.mean(means))
    var_all = max(float(np.mean(second_moments)) - mean_all * mean_all, 0.0)
    row.update({"min": min(mins), "max": max(maxs), "mean": mean_all,
                "std": math.sqrt(var_all)})
    return row


def stats_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """The rows as a pyarrow table sorted by ``item_id``, per-channel columns null-padded."""
    rows = sorted(rows, key=lambda r: r["item_id"])
    channels = max((int(r["channels"]) for r in rows), default=0)
    fields = list(STATS_SCHEMA)
    fields += [pa.field(f"{stat}_{ch}", pa.float64())
               for ch in range(channels) for stat in _PER_CHANNEL]
    schema = pa.schema(fields)
    columns = {f.name: [r.get(f.name) for r in rows] for f in fields}
    return pa.table(columns, schema=schema)


def stats_reduce(partials: Sequence[Sequence[Mapping[str, Any]]], dest: str,
                 **params: Any) -> str:
    """Write every chunk's rows as one Parquet table at ``dest + ".parquet"``, atomically.

    Returns
    -------
    str
        The path written.
    """
    table = stats_table([row for part in partials for row in part])
    path = dest + ".parquet"
    with _atomic_path(path) as tmp:
        pq.write_table(table, os.fspath(tmp))
    return path


def _parquet_suffix(params: Mapping[str, Any]) -> str:
    return ".parquet"


def _stats_memory(header: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    # the decoded image plus one float64 channel for the standard deviation
    return decoded_bytes(header) + plane_pixels(header) * 8


@register_op("stats", kind="aggregate", memory=_stats_memory, reduce=stats_reduce,
             suffix=_parquet_suffix, partial="rows")
def stats(images: Sequence[Image | None], items: Sequence[Mapping[str, Any]]
          ) -> list[dict[str, Any]]:
    """Per-image statistics (size, dtype, min/max/mean/std per channel) into one Parquet table.

    Parameters
    ----------
    images
        The chunk's images (``None`` for an item that failed upstream: skipped).
    items
        The matching items (``item_id``, ``path``, ``rel``).

    Returns
    -------
    list of dict
        One row per image, see :func:`image_stats`.
    """
    return [image_stats(image, item) for image, item in _present(images, items)]


# --------------------------------------------------------------------------- contact sheet


def _levels(background: float | Sequence[float]) -> tuple[int, int, int]:
    values = [background] * 3 if isinstance(background, int | float) else list(background)
    if len(values) == 1:
        values = values * 3
    r, g, b = (round(float(v)) for v in values[:3])
    return r, g, b


def thumbnail(image: Image, size: int, background: float | Sequence[float] = 255
              ) -> np.ndarray:
    """``image`` as 8-bit RGB (y, x, 3) whose long side is at most ``size`` pixels.

    16-bit and float images are scaled to 8 bits, gray is replicated, alpha is
    composited over ``background`` (8-bit levels). Never enlarges.
    """
    arr = np.asarray(image.data)
    if arr.dtype != np.uint8:
        arr = convert_dtype_array(arr, np.uint8)
    alpha = has_alpha(image)
    colour = arr.shape[2] - 1 if alpha else arr.shape[2]
    if colour not in (1, 3):
        arr, alpha, colour = arr[:, :, :1], False, 1
    src = {(1, False): "gray", (1, True): "graya", (3, False): "rgb", (3, True): "rgba"}
    arr = convert_space_array(arr, src[colour, alpha], "rgb", background=_levels(background))
    w, h = resize_shape(image.width, image.height, long_side=size)
    return resize_array(arr, w, h)


def sheet_layout(
    n: int, thumb: int, columns: int | None = None, padding: int = 4, label_height: int = 0
) -> tuple[int, int, list[tuple[int, int]]]:
    """The contact sheet's ``(width, height, boxes)`` for ``n`` tiles, row by row.

    Each tile gets a ``thumb`` x ``thumb`` box (plus ``label_height`` below it) with
    ``padding`` around; ``boxes`` are the boxes' top-left corners ``(x, y)``.
    ``columns`` defaults to ``ceil(sqrt(n))`` and is at most ``n``.

    Examples
    --------
    >>> sheet_layout(5, 10, padding=2)
    (38, 26, [(2, 2), (14, 2), (26, 2), (2, 14), (14, 14)])
    """
    count = max(n, 1)
    cols = columns if columns is not None else math.ceil(math.sqrt(count))
    cols = max(1, min(cols, count))
    rows = math.ceil(count / cols)
    cell_w, cell_h = thumb + padding, thumb + label_height + padding
    boxes = [(padding + (i % cols) * cell_w, padding + (i // cols) * cell_h)
             for i in range(n)]
    return cols * cell_w + padding, rows * cell_h + padding, boxes


def render_contact_sheet(
    tiles: Sequence[Mapping[str, Any]],
    *,
    thumb: int = 128,
    columns: int | None = None,
    padding: int = 4,
    background: float | Sequence[float] = 255,
    labels: bool = True,
) -> np.ndarray:
    """Tile the thumbnails, in the order given, into one 8-bit RGB sheet (y, x, 3).

    Each ``tile`` has ``thumb`` (an RGB uint8 array, long side <= ``thumb``) and
    ``label``; each thumbnail is centred in its box, its label (when ``labels``) drawn
    below it. See :func:`sheet_layout` for the geometry.
    """
    label_height = _LABEL_HEIGHT if labels else 0
    width, height, boxes = sheet_layout(len(tiles), thumb, columns, padding, label_height)
    sheet = np.empty((height, width, 3), dtype=np.uint8)
    sheet[:] = np.array(_levels(background), dtype=np.uint8)
    for tile, (x, y) in zip(tiles, boxes, strict=True):
        pixels = tile["thumb"]
        th, tw = pixels.shape[:2]
        ox, oy = x + (thumb - tw) // 2, y + (thumb - th) // 2
        sheet[oy:oy + th, ox:ox + tw] = pixels
    if not labels or not tiles:
        return sheet
    canvas = PILImage.fromarray(sheet)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=10)
    ink = (0, 0, 0) if sum(_levels(background)) > 384 else (255, 255, 255)
    for tile, (x, y) in zip(tiles, boxes, strict=True):
        text = str(tile.get("label", ""))
        while text and draw.textlength(text, font=font) > thumb:
            text = text[1:]
        draw.text((x, y + thumb + 1), text, fill=ink, font=font)
    return np.asarray(canvas).copy()


def _sheet_check(params: Mapping[str, Any]) -> list[str]:
    problems = []
    bg = params.get("background")
    if isinstance(bg, list | tuple) and (
            len(bg) not in (1, 3)
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bg)):
        problems.append(f"parameter 'background': expected a level or [r, g, b] levels, "
                        f"got {bg!r}")
    if params["format"] not in ("jpeg", "png"):
        problems.append(f"parameter 'format': expected 'jpeg' or 'png', got "
                        f"{params['format']!r}")
    return problems


def _sheet_memory(header: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    # the decoded image, its 8-bit RGB copy, and the resampling buffers
    return decoded_bytes(header) + plane_pixels(header) * 3 * 2


def contact_sheet_reduce(
    partials: Sequence[Sequence[Mapping[str, Any]]],
    dest: str,
    *,
    thumb: int = 128,
    columns: int | None = None,
    padding: int = 4,
    background: float | Sequence[float] = 255,
    labels: bool = True,
    format: str = "jpeg",
    quality: int = 90,
) -> str:
    """Tile every chunk's thumbnails, sorted by item id, and write the sheet atomically.

    Returns
    -------
    str
        The path written: ``dest`` plus ``.jpg`` or ``.png``.
    """
    from dagflow.io import write_image

    tiles = sorted((t for part in partials for t in part), key=lambda t: t["item_id"])
    sheet = render_contact_sheet(tiles, thumb=thumb, columns=columns, padding=padding,
                                 background=background, labels=labels)
    path = dest + SUFFIXES[format]
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    write_image(Image(sheet, {"space": "rgb"}), path, format=format, quality=quality)
    return path


def _sheet_suffix(params: Mapping[str, Any]) -> str:
    return SUFFIXES[params.get("format", "jpeg")]


@register_op(
    "contact_sheet",
    kind="aggregate",
    params=[
        Param("thumb", int, 128, "long side of each thumbnail in pixels",
              minimum=8, maximum=2048),
        Param("columns", int, None, "tiles per row; null = ceil(sqrt(n))", minimum=1,
              nullable=True),
        Param("padding", int, 4, "pixels between tiles", minimum=0, maximum=256),
        Param("background", (float, list), 255, "sheet colour, 8-bit levels (one or "
              "[r, g, b])", minimum=0, maximum=255),
        Param("labels", bool, True, "write each item's relative path under its tile"),
        Param("format", str, "jpeg", "sheet format", choices=("jpeg", "png")),
        Param("quality", int, 90, "JPEG quality", minimum=1, maximum=100),
    ],
    memory=_sheet_memory,
    check=_sheet_check,
    reduce=contact_sheet_reduce,
    suffix=_sheet_suffix,
    partial="rows",
)
def contact_sheet(
    images: Sequence[Image | None],
    items: Sequence[Mapping[str, Any]],
    *,
    thumb: int = 128,
    background: float | Sequence[float] = 255,
    **params: Any,
) -> list[dict[str, Any]]:
    """A grid of labelled thumbnails of every item, sorted by item id, as one image.

    Parameters
    ----------
    images
        The chunk's images (``None`` for an item that failed upstream: skipped).
    items
        The matching items (``item_id``, ``path``, ``rel``).
    thumb
        Long side of each thumbnail.
    background
        Sheet colour, also the colour transparent pixels are composited over.
    **params
        The sheet's layout and format, used by :func:`contact_sheet_reduce`.

    Returns
    -------
    list of dict
        One entry per image: ``item_id``, ``label`` and ``thumb`` (8-bit RGB pixels).
    """
    return [
        {"item_id": int(item["item_id"]), "label": str(item.get("rel") or item["item_id"]),
         "thumb": thumbnail(image, thumb, background)}
        for image, item in _present(images, items)
    ]
