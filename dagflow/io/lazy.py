"""Images larger than memory: a TIFF read lazily as a chunked dask array.

:func:`open_image` gives an ``xarray.DataArray`` with dims ``("y", "x", "c")``, backed by
a dask array whose every block is read by a task, from the file, when it is computed:
nothing is decoded when the array is opened, and only the strips or tiles a block
overlaps are read and decoded for it. Tiled and striped TIFFs, BigTIFF, contiguous and
separate planes, uncompressed or with any codec tifffile decodes are read.

Why not tifffile's zarr store: it cannot be pickled (it holds an open file), so a graph
built on it cannot travel to a distributed worker. Here each block task holds only a
:class:`TiffBlockReader` -- the path and the page's layout, a few hundred bytes -- and
opens the file inside the task (``tifffile.TiffFile`` parses the first IFD, then the
block's segments are read by offset and decoded with the page's own decoder).

A TIFF on object storage (``s3://``, any fsspec URL) is read the same way, by ranged
requests: its tags from the first kilobytes (:class:`dagflow.io.storage.RangedFile`), and
for each block exactly the tiles (or strips) it overlaps, fetched concurrently
(``cat_ranges``), never the whole object. A block checks the object's ETag (on S3 from
the answer to its first ranged request, which no ``HEAD`` precedes), as a local block
checks the file's modification time.

Blocks are aligned to the file's tiles (or strips) so that no segment is decoded twice
for neighbouring blocks; the default block side is ``dagflow.resources.tile-chunk``
(2048) rounded to whole tiles. A striped file gets full-width blocks of about as many
pixels (a strip spans the width, so narrower blocks would decode it again each).

Layouts :func:`open_image` reads: grey, grey + alpha, RGB, RGB + alpha and any number of
extra samples (``minisblack``/``rgb`` photometric, and JPEG-compressed YCbCr as slide
scanners write it; 8-64 bit integers and floats), with any codec of ``imagecodecs``
(LZW, Deflate, ZSTD, JPEG...). Palette, CMYK, uncompressed YCbCr, L*a*b*, min-is-white and
2- to 15-bit TIFFs, and multi-page volumes, raise
:class:`~dagflow.exceptions.BadInputError` (``unsupported_mode``): read them whole with
:func:`dagflow.io.read_image`. The EXIF/TIFF orientation is applied lazily (flips and
transposes of the dask array), as :func:`~dagflow.io.read_image` applies it.

This module owns lazy reading only; writing tiles is :mod:`dagflow.tiled`'s.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dagflow.exceptions import BadInputError, DagflowError
from dagflow.io.orient import apply_orientation
from dagflow.io.redact import redact_url
from dagflow.io.storage import is_remote

if TYPE_CHECKING:
    import dask.array as da
    import xarray as xr

__all__ = ["TiffBlockReader", "open_image", "open_tiff_array"]

_MINISBLACK, _RGB, _YCBCR = 1, 2, 6
#: TIFF JPEG compressions: their YCbCr segments decode to RGB.
_JPEG_COMPRESSIONS = frozenset({7, 33007, 34892})
_SPACES = {1: "gray", 2: "graya", 3: "rgb", 4: "rgba"}

#: Reads segments of an open TIFF: ``(offset, count)`` pairs -> their bytes.
Fetch = Callable[[Sequence[tuple[int, int]]], list[bytes]]


@dataclass(frozen=True)
class TiffBlockReader:
    """Reads any ``[y0:y1, x0:x1]`` region of a TIFF's first page; small and picklable.

    Parameters
    ----------
    path
        The file, or the object's URL.
    shape
        ``(height, width, channels)`` as stored (before orientation).
    dtype
        The samples' dtype.
    tile
        ``(tile length, tile width)`` for a tiled page, ``None`` for strips.
    rows_per_strip
        Rows per strip of a striped page.
    separate
        Samples stored in separate planes (planar configuration 2).
    mtime_ns
        The file's modification time when opened; a block read after the file changed
        raises instead of mixing two versions.
    etag
        An object's ETag when opened, checked the same way (``None`` for a file).
    storage_options
        An object's storage options, over ``dagflow.storage.options`` of the process
        that reads it (never shown by ``repr``).
    """

    path: str
    shape: tuple[int, int, int]
    dtype: str
    tile: tuple[int, int] | None
    rows_per_strip: int
    separate: bool
    mtime_ns: int
    etag: str | None = None
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False,
                                                      compare=False)

    @property
    def ndim(self) -> int:
        return 3

    def segment_grid(self) -> tuple[int, int, int, int]:
        """``(segment height, segment width, segments down, segments across)``."""
        height, width, _ = self.shape
        if self.tile is not None:
            th, tw = self.tile
            return th, tw, -(-height // th), -(-width // tw)
        rps = max(1, min(self.rows_per_strip, height))
        return rps, width, -(-height // rps), 1

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The region ``[y0:y1, x0:x1]`` with every channel, as ``(y, x, c)``."""
        height, width, channels = self.shape
        out = np.zeros((y1 - y0, x1 - x0, channels), dtype=self.dtype)
        if y1 <= y0 or x1 <= x0:
            return out
        sh, sw, n_down, n_across = self.segment_grid()
        rows = range(y0 // sh, min(n_down, -(-y1 // sh)))
        cols = range(x0 // sw, min(n_across, -(-x1 // sw)))
        planes = range(channels) if self.separate else range(1)
        per_plane = n_down * n_across
        with self._open() as (tif, fetch):
            page = tif.pages.first
            offsets, counts = page.dataoffsets, page.databytecounts
            jpegtables = getattr(page, "jpegtables", None)
            indices = sorted(p * per_plane + r * n_across + c
                             for p in planes for r in rows for c in cols)
            for index in indices:
                if index >= len(offsets):
                    raise BadInputError("corrupt", f"{self._where}: segment {index} is "
                                        "missing")
            stored = [i for i in indices if counts[i] > 0 and offsets[i] > 0]
            fetched = dict(zip(stored, fetch([(offsets[i], counts[i]) for i in stored]),
                               strict=True))
            for index in indices:
                data = fetched.get(index)  # None: an empty segment, read as zeros
                if data is not None and len(data) < counts[index]:
                    raise BadInputError("truncated", f"{self._where}: segment {index} is "
                                        "cut short")
                segment, (s, _, sy, sx, _), _ = page.decode(data, index,
                                                             jpegtables=jpegtables)
                if segment is None:
                    continue  # an empty segment reads as zeros
                seg = segment[0]  # (length, width, contig samples)
                seg_h = min(seg.shape[0], height - sy)
                seg_w = min(seg.shape[1], width - sx)
                ty0, ty1 = max(y0, sy), min(y1, sy + seg_h)
                tx0, tx1 = max(x0, sx), min(x1, sx + seg_w)
                if ty1 <= ty0 or tx1 <= tx0:
                    continue
                block = seg[ty0 - sy:ty1 - sy, tx0 - sx:tx1 - sx]
                target = (slice(ty0 - y0, ty1 - y0), slice(tx0 - x0, tx1 - x0))
                if self.separate:
                    out[(*target, s)] = block[..., 0]
                else:
                    out[target] = block
        return out

    @property
    def _where(self) -> str:
        return redact_url(self.path)

    @contextlib.contextmanager
    def _open(self) -> Iterator[tuple[Any, Fetch]]:
        """The open TIFF, unchanged since the reader was made, and how to fetch its
        segments: ``(offset, count)`` pairs -> their bytes."""
        import tifffile

        if is_remote(self.path):
            with _open_object(self.path, self.storage_options, self.etag) as (tif, fetch, _):
                yield tif, fetch
            return
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise BadInputError("missing", f"{self.path}: {exc.strerror}") from exc
        if st.st_mtime_ns != self.mtime_ns:
            raise BadInputError("changed", f"{self.path} changed while it was being read")
        with tifffile.TiffFile(self.path) as tif:
            fh = tif.filehandle

            def fetch(ranges: Sequence[tuple[int, int]]) -> list[bytes]:
                found = []
                for offset, count in ranges:
                    fh.seek(offset)
                    found.append(fh.read(count))
                return found

            yield tif, fetch

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        ys, xs = key[0], key[1]
        cs = key[2] if len(key) > 2 else slice(None)
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        return self.read(y0, y1, x0, x1)[:, :, cs]


def _read_block(reader: TiffBlockReader, block_info: dict | None = None) -> np.ndarray:
    loc = block_info[None]["array-location"]  # type: ignore[index]
    (y0, y1), (x0, x1) = loc[0], loc[1]
    return reader.read(y0, y1, x0, x1)


@contextlib.contextmanager
def _open_object(url: str, options: Mapping[str, Any] | None, etag: str | None
                 ) -> Iterator[tuple[Any, Fetch, str | None]]:
    """An object's TIFF parsed from ranged reads, a fetch of its segments by concurrent
    ranged requests, and its ETag; ``etag``, when given, must still be the object's."""
    import tifffile

    from dagflow import config
    from dagflow.io import storage
    from dagflow.io.errors import storage_errors

    block = int(config.get("storage.probe-bytes", storage.DEFAULT_PROBE_BYTES))
    head, st = storage.read_first(url, block, options)  # its ETag from the same answer
    if etag is not None and st.etag != etag:
        raise BadInputError("changed", f"{redact_url(url)} changed while it was being read")
    fs, path = storage.filesystem(url, options)

    def fetch(ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        if not ranges:
            return []
        with storage_errors(url, action="read"):
            return list(fs.cat_ranges([path] * len(ranges), [o for o, _ in ranges],
                                      [o + c for o, c in ranges], on_error="raise"))

    with storage.RangedFile(fs, path, st.size, url, block_size=block, head=head) as fp:
        try:
            tif = tifffile.TiffFile(fp)
        except DagflowError:  # a ranged read that failed, already classified
            raise
        except Exception as exc:
            from dagflow.io.errors import storage_error

            failure = storage_error(exc, url)
            if failure is not None:
                raise failure from exc
            raise BadInputError("unidentified", f"{redact_url(url)} is not a readable TIFF: "
                                f"{exc}") from exc
        with tif:
            yield tif, fetch, st.etag


def _inspect(path: str, options: Mapping[str, Any] | None = None
             ) -> tuple[TiffBlockReader, dict[str, Any]]:
    if is_remote(path):
        with _open_object(path, options, None) as (tif, _, etag):
            return _describe(tif, path, 0, etag, options)
    import tifffile

    try:
        st = os.stat(path)
    except OSError as exc:
        raise BadInputError("missing", f"{path}: {exc.strerror}") from exc
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise BadInputError("unidentified", f"{path} is not a readable TIFF: {exc}") from exc
    with tif:
        return _describe(tif, path, st.st_mtime_ns, None, None)


def _describe(tif: Any, path: str, mtime_ns: int, etag: str | None,
              options: Mapping[str, Any] | None) -> tuple[TiffBlockReader, dict[str, Any]]:
    from dagflow.io.probe import tiff_layout

    where = redact_url(path)
    layout = tiff_layout(tif)
    page = tif.pages.first
    photometric = int(page.photometric)
    if photometric == _YCBCR and int(page.compression) in _JPEG_COMPRESSIONS:
        photometric = _RGB  # the JPEG decoder converts each segment to RGB
    if photometric not in (_MINISBLACK, _RGB) or layout["source_dtype"] != layout["dtype"]:
        raise BadInputError("unsupported_mode", f"{where}: photometric {photometric} is "
                            "not read lazily (read it whole with read_image)")
    if int(page.bitspersample) != np.dtype(layout["dtype"]).itemsize * 8:
        raise BadInputError("unsupported_mode", f"{where}: {page.bitspersample}-bit "
                            "samples are not read lazily (read it whole with read_image)")
    separate = int(page.planarconfig) == 2 and layout["samples"] > 1
    shaped = page.shaped  # (separate samples, depth, length, width, contig samples)
    if shaped[1] != 1:
        raise BadInputError("unsupported_mode", f"{where}: a volume, not an image")
    tile = (int(page.tilelength), int(page.tilewidth)) if page.is_tiled else None
    reader = TiffBlockReader(
        path=path, shape=(layout["height"], layout["width"], layout["channels"]),
        dtype=layout["dtype"], tile=tile, rows_per_strip=int(page.rowsperstrip or 0)
        or layout["height"], separate=separate, mtime_ns=mtime_ns, etag=etag,
        storage_options=options)
    resolution = None
    try:
        resolution = [float(v) for v in page.get_resolution()]
    except Exception:
        resolution = None
    meta = {
        "path": path, "format": "tiff", "source_width": layout["width"],
        "source_height": layout["height"], "source_orientation": layout["orientation"],
        "dtype": layout["dtype"], "photometric": "rgb" if photometric == _RGB else
        "minisblack", "compression": page.compression.name.lower(),
        "tile": list(tile) if tile else None,
        "rows_per_strip": None if tile else reader.rows_per_strip,
        "bigtiff": bool(tif.is_bigtiff), "ome": bool(tif.is_ome),
        "description": page.description or None, "resolution": resolution,
        "pages": layout["frames"],
    }
    return reader, meta


def _block_side(segment: int, target: int) -> int:
    return max(segment, segment * max(1, round(target / segment)))


def open_tiff_array(path: str | os.PathLike[str], chunks: int | tuple[int, int] | None = None,
                    *, auto_orient: bool = True,
                    storage_options: Mapping[str, Any] | None = None,
                    ) -> tuple[da.Array, dict[str, Any]]:
    """The TIFF's first page as a lazy ``(y, x, c)`` dask array, and its metadata.

    Parameters
    ----------
    path
        A TIFF or BigTIFF file, or an object's URL (``s3://...``: read by ranged requests).
    chunks
        Block side (or ``(height, width)``) in pixels, rounded to whole tiles or strips;
        default ``dagflow.resources.tile-chunk``.
    auto_orient
        Apply the file's orientation tag (lazily).
    storage_options
        For a URL: storage options over ``dagflow.storage.options`` (they travel with
        the graph's tasks, never shown by its ``repr``).

    Raises
    ------
    BadInputError
        For a missing file, a file that is not a TIFF, or a layout not read lazily.
    """
    import dask.array as da

    from dagflow import config

    path = os.fspath(path)
    reader, meta = _inspect(path, storage_options)
    height, width, channels = reader.shape
    if chunks is None:
        chunks = int(config.get("resources.tile-chunk"))
    ch, cw = (chunks, chunks) if isinstance(chunks, int) else chunks
    sh, sw, _, _ = reader.segment_grid()
    if reader.tile is None and isinstance(chunks, int):
        # strips span the width: full-width blocks of about chunks**2 pixels, so that no
        # strip is decoded twice
        bh, bw = min(height, _block_side(sh, max(1, ch * cw // max(1, width)))), width
    else:
        bh = min(height, _block_side(sh, ch))
        bw = min(width, _block_side(sw, cw)) if reader.tile is not None else min(width, cw)
    block_chunks = (_split(height, bh), _split(width, bw), (channels,))
    name = f"open-tiff-{_token(reader)}"
    array = da.map_blocks(_read_block, reader, chunks=block_chunks, dtype=np.dtype(reader.dtype),
                          meta=np.empty((0, 0, 0), dtype=reader.dtype), name=name)
    orientation = meta["source_orientation"]
    if auto_orient and orientation != 1:
        array = apply_orientation(array, orientation)
    meta["orientation"] = 1 if auto_orient else orientation
    meta["space"] = _SPACES.get(channels, "multi")
    meta["width"], meta["height"] = int(array.shape[1]), int(array.shape[0])
    meta["channels"] = channels
    return array, meta


def _split(total: int, block: int) -> tuple[int, ...]:
    full, rest = divmod(total, block)
    return (block,) * full + ((rest,) if rest else ())


def _token(reader: TiffBlockReader) -> str:
    from dask.base import tokenize

    return tokenize(reader.path, reader.shape, reader.dtype, reader.mtime_ns, reader.etag,
                    reader.tile, reader.rows_per_strip)


def open_image(path: str | os.PathLike[str], chunks: int | tuple[int, int] | None = None,
               *, auto_orient: bool = True,
               storage_options: Mapping[str, Any] | None = None) -> xr.DataArray:
    """Open a (large) TIFF lazily as an ``xarray.DataArray`` with dims ``y, x, c``.

    Nothing is decoded until the array is computed; each block is read by its own task
    (on a distributed worker, when computed on a cluster).

    Parameters
    ----------
    path
        A TIFF or BigTIFF file, tiled or striped, or an object's URL (``s3://...``):
        each block then fetches the tiles it overlaps by ranged requests.
    chunks
        Block side in pixels (or ``(height, width)``), rounded to whole tiles.
    auto_orient
        Apply the orientation tag lazily (``attrs["source_orientation"]`` keeps it).
    storage_options
        For a URL: storage options over ``dagflow.storage.options``.

    Returns
    -------
    xarray.DataArray
        Backed by a dask array; ``attrs`` hold the file's metadata (``path``, ``format``,
        ``space``, ``dtype``, ``photometric``, ``compression``, ``tile``, ``bigtiff``,
        ``ome``, ``description``, ``resolution``...).

    Raises
    ------
    BadInputError
        For a file that is missing, not a TIFF, or of a layout not read lazily.

    Examples
    --------
    >>> import dagflow  # doctest: +SKIP
    >>> img = dagflow.open_image("slide.tif")  # doctest: +SKIP
    >>> img.sizes  # doctest: +SKIP
    Frozen({'y': 30000, 'x': 30000, 'c': 3})
    """
    import xarray as xr

    array, meta = open_tiff_array(path, chunks, auto_orient=auto_orient,
                                  storage_options=storage_options)
    return xr.DataArray(array, dims=("y", "x", "c"), attrs=meta)


def chunk_bytes(array: Any) -> int:
    """Bytes of the largest block of a dask array."""
    return int(math.prod(max(c) for c in array.chunks) * np.dtype(array.dtype).itemsize)
