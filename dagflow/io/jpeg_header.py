"""A JPEG's size, layout and orientation from its first bytes, by walking its markers.

Every item's header is read before anything is scheduled (the memory model needs it),
so this runs once per image on the client: Pillow's lazy ``open`` takes 70-190
microseconds per JPEG (it parses every quantisation and Huffman table in Python), this
walker a few. It answers only for the common case and says so with ``None`` otherwise
(12-bit samples, an unusual component count, a multi-picture file, a header longer than
the bytes given, anything malformed): the caller then asks Pillow, whose errors name
what is wrong with the file.
"""

from __future__ import annotations

from typing import Any

from dagflow.io.orient import exif_orientation

__all__ = ["jpeg_header"]

#: Start-of-frame markers (baseline, extended, progressive, lossless; Huffman and
#: arithmetic coded); not DHT (C4), JPG (C8) or DAC (CC).
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                  0xCF})
#: Markers without a length: TEM, RST0-7 (SOI is checked first).
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
#: Components -> channels of the array dagflow's reader returns (CMYK is converted to RGB).
_CHANNELS = {1: 1, 3: 3, 4: 3}


def jpeg_header(data: bytes) -> dict[str, Any] | None:
    """``width``, ``height``, ``channels``, ``dtype``, ``orientation`` and ``frames`` of
    the JPEG that starts with ``data``, or ``None`` when only a full parser can tell.

    Parameters
    ----------
    data
        The file's first bytes: enough to reach its start-of-scan marker.

    Examples
    --------
    >>> sof = bytes([0xFF, 0xC0, 0, 17, 8, 0, 30, 0, 40, 3]) + bytes(9)
    >>> sos = bytes([0xFF, 0xDA, 0, 2])
    >>> jpeg_header(b"\\xff\\xd8" + sof + sos)["width"]
    40
    >>> jpeg_header(b"\\xff\\xd8" + sof) is None  # no start of scan within the bytes
    True
    """
    if data[:2] != b"\xff\xd8":
        return None
    n = len(data)
    pos = 2
    frame: tuple[int, int, int] | None = None
    exif: bytes | None = None
    while pos < n:
        if data[pos] != 0xFF:
            return None
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            return None
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker == 0xD9 or marker == 0xD8 or pos + 2 > n:
            return None
        length = (data[pos] << 8) | data[pos + 1]
        end = pos + length
        if length < 2 or end > n:
            return None
        segment = data[pos + 2:end]
        if marker == 0xDA:  # start of scan: the header is over
            break
        if marker in _SOF:
            if len(segment) < 6 or frame is not None:
                return None
            precision, ncomp = segment[0], segment[5]
            height = (segment[1] << 8) | segment[2]
            width = (segment[3] << 8) | segment[4]
            if precision != 8 or ncomp not in _CHANNELS or not width or not height:
                return None
            frame = (width, height, _CHANNELS[ncomp])
        elif marker == 0xE1 and exif is None and segment[:6] == b"Exif\x00\x00":
            exif = segment
        elif marker == 0xE2 and segment[:4] == b"MPF\x00":
            return None  # a multi-picture file: its frames are Pillow's to count
        pos = end
    else:
        return None
    if frame is None:
        return None
    width, height, channels = frame
    return {"width": width, "height": height, "channels": channels, "dtype": "uint8",
            "orientation": exif_orientation(exif), "frames": 1}
