"""Reading, probing and writing image files, safely.

* :func:`probe_header` -- size, layout, orientation of an image without decoding it;
* :func:`read_image` -- decode to an :class:`~dagflow.image.Image` ``(y, x, c)``, with a
  pixel limit checked before decoding, JPEG draft decoding and EXIF auto-orientation;
* :func:`write_image` -- encode to JPEG, PNG (8/16-bit), WebP or TIFF, atomically;
* :func:`open_image` -- a (large) TIFF as a lazy ``xarray.DataArray`` whose blocks are
  read inside the tasks that compute them (:mod:`dagflow.io.lazy`);
* :func:`atomic_write`, :func:`atomic_path`, :func:`safe_join`, :func:`find_temporaries`
  -- output files that appear whole or not at all, under their root.

Each of them takes a URL of any installed fsspec protocol (``s3://``, ``gs://``,
``az://``, ``memory://``) as well as a local path: :mod:`dagflow.io.storage` resolves
filesystems, stats, lists and reads by ranges, :mod:`dagflow.io.upload` writes objects
whole or not at all (no rename on a store), :mod:`dagflow.io.redact` keeps credentials
out of what is logged and recorded.

Formats are recognised by content, never by suffix. Failures end in
:class:`~dagflow.exceptions.BadInputError` (with a ``reason``),
:class:`~dagflow.exceptions.TransientError` or, for a store that cannot be used,
:class:`~dagflow.exceptions.StorageError`. This package imports nothing from the
workflow, compile or runtime layers.
"""

from __future__ import annotations

from dagflow.io.atomic import TEMP_PATTERN, atomic_path, atomic_write, find_temporaries, safe_join
from dagflow.io.formats import FORMAT_SUFFIXES, IMAGE_EXTENSIONS, sniff_format
from dagflow.io.lazy import open_image
from dagflow.io.probe import probe_header
from dagflow.io.read import DEFAULT_MAX_PIXELS, read_image
from dagflow.io.write import write_image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMAT_SUFFIXES",
    "IMAGE_EXTENSIONS",
    "TEMP_PATTERN",
    "atomic_path",
    "atomic_write",
    "find_temporaries",
    "open_image",
    "probe_header",
    "read_image",
    "safe_join",
    "sniff_format",
    "write_image",
]
