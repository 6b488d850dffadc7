"""Public test fixtures: synthetic pixels, a sample corpus and a hostile-file corpus.

Everything here is generated, deterministic for a seed, and needs no network:

* :func:`photo_like` -- photograph-like pixels, fast;
* :func:`make_sample_corpus` -- JPEGs under every EXIF orientation, plain photos, PNG
  (alpha, palette, grey, 16-bit), TIFF 16-bit, WebP, GIF, CMYK, and a few corrupt files;
* :func:`make_bad_corpus` -- hostile files, each with its :class:`Expectation`;
* :func:`tiff_corpus_files` -- TIFF codecs and sample layouts, each with its pixels;
* :func:`jpeg_with_orientation` and friends -- JPEGs with chosen EXIF blocks.

Users test their own ops and workflows with these; dagflow's tests use them too.
"""

from __future__ import annotations

from dagflow.testing.badcorpus import (
    OK,
    Expectation,
    bad_corpus_files,
    check_file,
    make_bad_corpus,
    read_outcome,
)
from dagflow.testing.exif import (
    exif_block,
    garbage_exif_block,
    insert_exif,
    jpeg_with_orientation,
    truncated_exif_block,
    write_jpeg_with_orientation,
)
from dagflow.testing.samples import make_sample_corpus
from dagflow.testing.synthetic import asymmetric_pattern, photo_like
from dagflow.testing.tiffs import TiffCase, tiff_corpus_files, write_tiff_corpus

__all__ = [
    "OK",
    "Expectation",
    "TiffCase",
    "asymmetric_pattern",
    "bad_corpus_files",
    "check_file",
    "exif_block",
    "garbage_exif_block",
    "insert_exif",
    "jpeg_with_orientation",
    "make_bad_corpus",
    "make_sample_corpus",
    "photo_like",
    "read_outcome",
    "tiff_corpus_files",
    "truncated_exif_block",
    "write_jpeg_with_orientation",
    "write_tiff_corpus",
]
