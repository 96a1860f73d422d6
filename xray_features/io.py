"""Read a chest X-ray file into one 2-D grayscale array.

`read_xray` is the only entry point. It returns a C-contiguous ``float32``
array of shape ``(height, width)`` with values in ``[0, 1]``:

- 8-bit JPEG/PNG are divided by 255, 16-bit PNG by 65535;
- colour (RGB, RGBA, palette, CMYK JPEG) is converted to luminance
  (ITU-R BT.601 weights); an alpha channel is dropped;
- DICOM gets its modality LUT (rescale slope/intercept), then is mapped to
  [0, 1] by one convention shared with 8-bit images (`dicom_unit_scale`): its
  window (Window Center/Width, linear or sigmoid, DICOM PS3.3 C.11.2.1.2)
  maps to [0, 1]; without a window an 8-bit film (Bits Stored <= 8, values
  in 0-255) is divided by 255 like a JPEG; a film with a VOI LUT table, or
  of more than 8 bits without a window, is min-max scaled; MONOCHROME1 is
  then inverted. An 8-bit film therefore reads the same as DICOM and as PNG.

The format is found from the file's bytes, not its extension. Every failure
raises `XrayReadError`, whose message names the file and the reason. Before
anything is read, the path is checked with ``fstat`` on a non-blocking handle:
only a regular file (also behind a symlink) of at most ``max_bytes`` is read,
so a device, FIFO or socket is refused at once. The pixel-count guard and the
decode-work guards (JPEG scan count, PNG inflated size) are checked before any
pixel is decoded.
"""

from __future__ import annotations

import math
import os
import re
import stat
import struct
import zlib

import cv2
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from .dicom import header_of

__all__ = ["XrayReadError", "read_xray", "read_xray_and_header", "looks_like_xray",
           "dicom_unit_scale", "ReadImages", "DEFAULT_MAX_PIXELS", "DEFAULT_MIN_SIDE",
           "DEFAULT_MAX_BYTES", "MAX_JPEG_SCANS"]

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest width*height accepted (a 30,000 x 30,000 "bomb" is 900 M)."""

DEFAULT_MIN_SIDE = 32
"""Smallest side accepted: thinner images cannot be chest X-rays."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_MAGIC_OFFSET = 128
DEFAULT_MAX_BYTES = 256 << 20
"""Largest file read (256 MiB): a 64 M-pixel 16-bit DICOM is 128 MiB, an
8-bit RGBA one 256 MiB; anything bigger is refused from its size, unread."""

MAX_JPEG_SCANS = 128
"""Most scans (SOS markers) accepted in a JPEG. Baseline files have one per
colour plane, progressive ones about 10; a decoder does a pass over the whole
image for each, so 10,000 scans of a 7999^2 image take most of a minute."""

_MAX_JPEG_SEGMENTS = 10_000  # header segments walked before the frame header
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


class XrayReadError(ValueError):
    """A file could not be read as a chest X-ray; the message says which and why."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def read_xray(path, *, max_pixels=DEFAULT_MAX_PIXELS, min_side=DEFAULT_MIN_SIDE, max_side=None,
              max_bytes=DEFAULT_MAX_BYTES):
    """Read an image file as a 2-D float32 array in [0, 1].

    Parameters
    ----------
    path : str or os.PathLike
        A JPEG, PNG (8 or 16 bit) or DICOM file.
    max_pixels : int
        Refuse images with more pixels than this, before decoding them.
    min_side : int
        Refuse images whose height or width is below this.
    max_side : int, optional
        Speed option for large JPEGs (None, the default, reads full size).
        When set, a JPEG is decoded at 1/2, 1/4 or 1/8 scale by the JPEG
        decoder itself (DCT scaling), the smallest scale whose longest side
        is still at least ``max_side``; it is not resized otherwise, so the
        result may be larger than ``max_side``. Pixels differ slightly from a
        full-size read followed by a resize. The size checks use the full
        size. PNG and DICOM are always read at full size.
    max_bytes : int
        Refuse files larger than this, from their size, before reading them.

    Returns
    -------
    ndarray of shape (height, width), float32
        The image, C-contiguous, values in [0, 1].

    Raises
    ------
    XrayReadError
        Missing, empty, truncated or corrupt file; not a regular file (a
        device, FIFO or socket, also behind a symlink); a file over
        ``max_bytes``; not an image; an unsupported pixel mode; too many / too
        few pixels; too much decoding work (a JPEG with more than
        `MAX_JPEG_SCANS` scans, a PNG whose image data inflates past what its
        header needs); or not enough memory to decode it.
    """
    return read_xray_and_header(path, max_pixels=max_pixels, min_side=min_side,
                                max_side=max_side, max_bytes=max_bytes)[0]


def read_xray_and_header(path, *, max_pixels=DEFAULT_MAX_PIXELS, min_side=DEFAULT_MIN_SIDE,
                         max_side=None, max_bytes=DEFAULT_MAX_BYTES):
    """`read_xray`, and a DICOM's header fields.

    Parameters
    ----------
    path, max_pixels, min_side, max_side, max_bytes
        As `read_xray`.

    Returns
    -------
    image : ndarray of shape (height, width), float32
        What `read_xray` returns.
    header : dict of str to str, or None
        For a DICOM, `xray_features.dicom.header_of` (Modality,
        BodyPartExamined, ViewPosition, PatientAge and the identifiers);
        None for JPEG and PNG.

    Raises
    ------
    XrayReadError
        As `read_xray`.
    """
    try:
        return _read_xray(path, max_pixels, min_side, max_side, max_bytes)
    except MemoryError:
        raise XrayReadError(path, "not enough memory to read and decode it") from None


def _read_xray(path, max_pixels, min_side, max_side, max_bytes):
    data = _read_bytes(path, max_bytes)
    kind = _sniff(data)
    if kind == "png":
        width, height = _png_size(path, data)
    elif kind == "jpeg":
        width, height = _jpeg_size(path, data)
    elif kind == "dicom":
        return _read_dicom(path, data, max_pixels, min_side)
    else:
        raise XrayReadError(path, "not an image: unrecognised content (expected JPEG, PNG or DICOM)")
    _check_size(path, width, height, max_pixels, min_side)
    if kind == "png":
        _check_png_inflated_size(path, data, width, height)
    if kind == "jpeg":
        _check_jpeg_complete(path, data)
        _check_jpeg_scans(path, data)
        reduction = _jpeg_reduction(width, height, max_side)
        if reduction > 1:
            return _decode_reduced_jpeg(path, data, reduction), None
    return _decode_raster(path, data), None


_FILE_KINDS = ((stat.S_ISDIR, "is a directory, not a file"),
               (stat.S_ISFIFO, "not a regular file: a FIFO (named pipe)"),
               (stat.S_ISSOCK, "not a regular file: a socket"),
               (stat.S_ISCHR, "not a regular file: a character device"),
               (stat.S_ISBLK, "not a regular file: a block device"))


def _nonblocking(name, flags):
    # O_NONBLOCK: opening a FIFO with no writer returns at once instead of
    # waiting forever; fstat then refuses it before any read. Windows has no
    # O_NONBLOCK (and no FIFOs in the file system): a plain open there.
    return os.open(name, flags | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))


def _read_bytes(path, max_bytes=DEFAULT_MAX_BYTES):
    if not isinstance(path, (str, bytes, os.PathLike)):  # an int would be a file descriptor
        raise XrayReadError(path, f"not a file path: {type(path).__name__}")
    try:
        with open(path, "rb", buffering=0, opener=_nonblocking) as handle:
            info = os.fstat(handle.fileno())
            for test, reason in _FILE_KINDS:
                if test(info.st_mode):
                    raise XrayReadError(path, reason)
            if not stat.S_ISREG(info.st_mode):
                raise XrayReadError(path, "not a regular file")
            if info.st_size > max_bytes:
                raise XrayReadError(path, f"file too large: {info.st_size:,} bytes > limit "
                                    f"{max_bytes:,}")
            data = _read_at_most(handle, max_bytes)
    except FileNotFoundError:
        raise XrayReadError(path, "file not found") from None
    except IsADirectoryError:
        raise XrayReadError(path, "is a directory, not a file") from None
    except PermissionError:
        raise XrayReadError(path, "permission denied") from None
    except OSError as exc:
        raise XrayReadError(path, f"cannot open: {exc.strerror or exc}") from None
    except XrayReadError:
        raise
    except ValueError as exc:  # "embedded null byte" and the like, from the name itself
        raise XrayReadError(path, f"invalid file name: {exc}") from None
    if not data:
        raise XrayReadError(path, "empty file (0 bytes)")
    if len(data) > max_bytes:  # it grew after the size check
        raise XrayReadError(path, f"file too large: more than {max_bytes:,} bytes")
    return data


def looks_like_xray(path):
    """Whether a file found in a folder is worth a row: False only for a
    readable regular file whose first bytes are none of JPEG, PNG or DICOM
    (the files `read_xray` refuses as "unrecognised content", and empty
    files).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    bool
        True for an image, and for anything that cannot be checked without
        blocking or reading much (a FIFO, a device, an unreadable or missing
        file): those get their row, and `read_xray` gives the reason.
    """
    try:
        with open(path, "rb", buffering=0, opener=_nonblocking) as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return True
            head = handle.read(_DICOM_MAGIC_OFFSET + 4)
    except (OSError, ValueError):
        return True
    return _sniff(head) is not None


def _read_at_most(handle, max_bytes):
    """The file's bytes, reading no more than ``max_bytes + 1`` of them."""
    chunks, total = [], 0
    while total <= max_bytes:
        chunk = handle.read(min(1 << 24, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _sniff(data):
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if data[_DICOM_MAGIC_OFFSET:_DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    return None


def _check_size(path, width, height, max_pixels, min_side):
    if width * height > max_pixels:
        raise XrayReadError(
            path, f"too many pixels: {width}x{height} = {width * height:,} > limit {max_pixels:,}"
        )
    if min(width, height) < min_side:
        raise XrayReadError(path, f"too small: {width}x{height}, a side is below {min_side} px")


def _png_size(path, data):
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise XrayReadError(path, "truncated or corrupt PNG: no IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    if zlib.crc32(data[12:29]) != struct.unpack(">I", data[29:33])[0]:
        raise XrayReadError(path, "corrupt PNG: bad IHDR checksum")
    if b"IEND" not in data[-12:]:
        raise XrayReadError(path, "truncated PNG: no IEND chunk at the end")
    return width, height


def _png_raw_size(data, width, height):
    """Bytes of filtered image data the IHDR calls for (None: unknown layout)."""
    bit_depth, colour_type, interlace = data[24], data[25], data[28]
    channels = _PNG_CHANNELS.get(colour_type)
    if channels is None or bit_depth not in (1, 2, 4, 8, 16):
        return None
    bits = bit_depth * channels

    def rows_size(w, h):
        return 0 if w == 0 or h == 0 else h * (1 + (w * bits + 7) // 8)

    if interlace != 1:
        return rows_size(width, height)
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
              (1, 0, 2, 2), (0, 1, 1, 2))  # Adam7: x0, y0, dx, dy
    return sum(rows_size(-(-(width - x0) // dx), -(-(height - y0) // dy))
               for x0, y0, dx, dy in passes)


def _check_png_inflated_size(path, data, width, height):
    """Inflate the IDAT stream (output discarded) and refuse one that holds
    more than its header's image needs: bounds the work and memory of the
    decoder, whatever the compressed size."""
    expected = _png_raw_size(data, width, height)
    if expected is None:
        return  # an invalid IHDR: the decoder refuses it
    inflater, produced, pos = zlib.decompressobj(), 0, 8
    limit = expected + 64
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            chunk = data[pos + 8:pos + 8 + length]
            try:
                while chunk and not inflater.eof:
                    produced += len(inflater.decompress(chunk, 1 << 22))
                    if produced > limit:
                        raise XrayReadError(
                            path, f"PNG image data inflates to more than the {expected:,} bytes "
                            f"its {width}x{height} header needs (a decompression bomb)")
                    chunk = inflater.unconsumed_tail
            except zlib.error:
                return  # corrupt data: the decoder gives the error
        elif kind == b"IEND":
            break
        pos += 12 + length


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(path, data):
    """Width and height from the first SOF marker, without decoding."""
    pos, segments = 2, 0
    end = len(data)
    while pos + 4 <= end:
        segments += 1
        if segments > _MAX_JPEG_SEGMENTS:
            raise XrayReadError(path, f"corrupt JPEG: more than {_MAX_JPEG_SEGMENTS:,} "
                                "segments before the frame header")
        if data[pos] != 0xFF:
            raise XrayReadError(path, "corrupt JPEG: bad marker structure")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            if width == 0 or height == 0:
                raise XrayReadError(path, "corrupt JPEG: zero width or height")
            return width, height
        if marker in (0xDA, 0xD9):
            break
        pos += 2 + length
    raise XrayReadError(path, "truncated or corrupt JPEG: no frame header")


def _check_jpeg_scans(path, data):
    # FF DA (start of scan) never occurs inside entropy-coded data (an FF
    # there is followed by 00 or a restart marker), so this counts the scans.
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise XrayReadError(path, f"too much decoding work: {scans:,} JPEG scans > limit "
                            f"{MAX_JPEG_SCANS}")


def _check_jpeg_complete(path, data):
    # Entropy-coded data never holds FF D9, so a whole file ends its last scan with EOI.
    if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise XrayReadError(path, "truncated JPEG: the image data ends early")


_REDUCED_COLOR = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  8: cv2.IMREAD_REDUCED_COLOR_8}


def _jpeg_reduction(width, height, max_side):
    """The largest of 8, 4, 2 keeping the longest side >= max_side, else 1."""
    if max_side is None:
        return 1
    longest = max(width, height)
    for factor in (8, 4, 2):
        if -(-longest // factor) >= int(max_side):
            return factor
    return 1


def _decode_reduced_jpeg(path, data, factor):
    # Colour decode (a grey JPEG comes back as three equal channels) and the
    # same BT.601 conversion as `_decode_raster`; EXIF orientation is ignored
    # there too (IMREAD_UNCHANGED), so it is ignored here.
    flags = _REDUCED_COLOR[factor] | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error as exc:
        raise XrayReadError(path, f"corrupt image: {str(exc).strip().splitlines()[-1]}") from None
    if image is None:
        raise XrayReadError(path, "corrupt image: the decoder rejected it")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return _scaled(image, 255.0)


def _scaled(image, scale):
    """``image`` as float32 divided by ``scale``; the same values as
    ``np.ascontiguousarray(image, np.float32) / np.float32(scale)``, without
    the second full-size array."""
    out = np.array(image, dtype=np.float32, order="C")
    out /= np.float32(scale)
    return out


def _decode_raster(path, data):
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise XrayReadError(path, f"corrupt image: {str(exc).strip().splitlines()[-1]}") from None
    if image is None:
        raise XrayReadError(path, "corrupt image: the decoder rejected it")
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        elif channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif channels == 1:
            image = image[:, :, 0]
        else:
            raise XrayReadError(path, f"unsupported pixel mode: {channels} channels")
    if image.dtype == np.uint8:
        scale = 255.0
    elif image.dtype == np.uint16:
        scale = 65535.0
    else:
        raise XrayReadError(path, f"unsupported pixel mode: dtype {image.dtype}")
    return _scaled(image, scale)


def _read_dicom(path, data, max_pixels, min_side):
    try:
        import pydicom
    except ImportError:  # pragma: no cover - pydicom is a core dependency
        raise XrayReadError(path, "DICOM support needs pydicom") from None
    from io import BytesIO

    try:
        dataset = pydicom.dcmread(BytesIO(data))
    except MemoryError:
        raise
    except Exception as exc:
        raise XrayReadError(path, f"corrupt DICOM: {_clean(exc)}") from None
    try:
        return _dicom_pixels(path, dataset, max_pixels, min_side), header_of(dataset)
    except (XrayReadError, MemoryError):
        raise
    except Exception as exc:  # pydicom raises many types on corrupt elements
        raise XrayReadError(path, f"corrupt DICOM: {type(exc).__name__}: {_clean(exc)}") from None


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _clean(exc):
    """An exception's message without memory addresses (``<... at 0x7f...>``),
    which differ from run to run and mean nothing to a reader."""
    return _ADDRESS.sub("", str(exc))


def _dicom_pixels(path, dataset, max_pixels, min_side):
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if "PixelData" not in dataset:
        raise XrayReadError(path, "DICOM has no pixel data")
    rows, cols = int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))
    _check_size(path, cols, rows, max_pixels, min_side)
    if int(dataset.get("NumberOfFrames", 1) or 1) != 1:
        raise XrayReadError(path, "unsupported DICOM: multi-frame")
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise XrayReadError(path, f"unsupported DICOM photometric interpretation: {photometric}")
    try:
        pixels = dataset.pixel_array
    except MemoryError:
        raise
    except Exception as exc:
        raise XrayReadError(path, f"corrupt DICOM pixel data: {_clean(exc)}") from None
    if pixels.ndim != 2:
        raise XrayReadError(path, f"unsupported DICOM pixel shape {pixels.shape}")
    values = apply_modality_lut(pixels, dataset)
    lut_table = "VOILUTSequence" in dataset
    if lut_table:
        values = apply_voi_lut(values, dataset, prefer_lut=True)
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise XrayReadError(path, "corrupt DICOM: pixel values are not finite after rescaling")
    scaled = dicom_unit_scale(values, None if lut_table else _window(dataset),
                              int(dataset.get("BitsStored", 16) or 16),
                              str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR"))
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.ascontiguousarray(scaled, dtype=np.float32)


def _window(dataset):
    """(center, width) of the first window, or None when there is no usable one."""
    try:
        center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
        if center is None or width is None:
            return None
        center, width = _first_number(center), _first_number(width)
    except (TypeError, ValueError, IndexError):
        return None
    if not (math.isfinite(center) and math.isfinite(width) and width >= 1):
        return None
    return center, width


def _first_number(value):
    """A DICOM number, or the first of several (a window may list more than one)."""
    if isinstance(value, (str, bytes, int, float)):
        return float(value)
    return float(value[0])


def dicom_unit_scale(values, window, bits_stored, function="LINEAR"):
    """Modality values of a DICOM -> [0, 1], the reader's one intensity convention.

    Parameters
    ----------
    values : ndarray of float64
        After the modality LUT (rescale slope and intercept).
    window : tuple of (float, float) or None
        Window Center and Width.
    bits_stored : int
    function : str
        VOI LUT Function: ``LINEAR`` (the default), ``LINEAR_EXACT`` or ``SIGMOID``.

    Returns
    -------
    ndarray of float64 in [0, 1]
        With a window, its DICOM formula (PS3.3 C.11.2.1.2) onto [0, 1]; an
        8-bit film with center 128 and width 256 comes out as ``values / 255``.
        Without one, values of an 8-bit film (``bits_stored <= 8``, all
        within 0-255) divided by 255, as a JPEG is; otherwise min-max scaled.
    """
    if window is not None:
        center, width = window
        function = function.strip().upper()
        if function == "SIGMOID":
            return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        if function == "LINEAR_EXACT":
            return np.clip((values - center) / width + 0.5, 0.0, 1.0)
        return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0) \
            if width > 1 else (values > center - 0.5).astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if bits_stored <= 8 and low >= 0 and high <= 255:
        return values / 255.0
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


class ReadImages(TransformerMixin, BaseEstimator):
    """Pipeline step: a sequence of file paths -> a list of 2-D float32 images.

    Stateless; see `read_xray` for the output convention, the errors and
    ``max_side`` (reduced JPEG decoding, off by default).
    """

    def __init__(self, max_pixels=DEFAULT_MAX_PIXELS, min_side=DEFAULT_MIN_SIDE, max_side=None):
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.max_side = max_side

    def __setstate__(self, state):
        state.setdefault("max_side", None)  # models saved before max_side existed
        super().__setstate__(state)

    def fit(self, X, y=None):
        """Nothing to learn: reading is stateless."""
        return self

    def transform(self, X):
        """The images of the paths ``X`` (`read_xray`), as a list of 2-D float32 arrays."""
        return [
            read_xray(os.fspath(path), max_pixels=self.max_pixels, min_side=self.min_side,
                      max_side=self.max_side)
            for path in X
        ]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags
