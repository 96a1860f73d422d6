import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from xray_features.io import ReadImages, XrayReadError, read_xray

from .conftest import phantom, write_image


def _gradient(h=64, w=80):
    return np.tile(np.linspace(0, 1, w, dtype=np.float32), (h, 1))


def _png_chunk(kind, payload):
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def png_header_only(width, height):
    """A PNG whose header claims width x height (a decompression-bomb shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def test_8bit_png_round_trip(tmp_path):
    image = _gradient()
    path = write_image(tmp_path / "g.png", image)
    out = read_xray(path)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.abs(out - image).max() <= 0.5 / 255 + 1e-6


def test_16bit_png_keeps_its_depth(tmp_path):
    raw = (np.arange(64 * 80).reshape(64, 80) * 12).astype(np.uint16)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), raw)
    out = read_xray(path)
    np.testing.assert_allclose(out, raw / 65535.0, atol=1e-7)
    assert len(np.unique(out)) > 256  # more levels than 8 bits could hold


def test_jpeg_reads_close_to_source(tmp_path):
    image = phantom(96)
    path = tmp_path / "p.jpeg"
    cv2.imwrite(str(path), (image * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert np.abs(read_xray(path) - image).mean() < 0.02


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_modes_become_luminance(tmp_path, mode):
    gray = (_gradient() * 255).astype(np.uint8)
    Image.fromarray(gray).convert(mode).save(tmp_path / "c.png")
    out = read_xray(tmp_path / "c.png")
    assert out.shape == gray.shape
    assert np.abs(out * 255 - gray).max() <= 1.5


def test_cmyk_jpeg_reads(tmp_path):
    gray = (_gradient() * 255).astype(np.uint8)
    Image.fromarray(gray).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    out = read_xray(tmp_path / "c.jpg")
    assert out.shape == gray.shape
    assert np.corrcoef(out.ravel(), gray.ravel())[0, 1] > 0.99


def test_png_with_wrong_extension_reads(tmp_path):
    path = write_image(tmp_path / "x.png", _gradient())
    renamed = path.rename(tmp_path / "x.jpeg")
    assert read_xray(renamed).shape == (64, 80)


def _truncated(tmp_path, suffix):
    path = write_image(tmp_path / f"t{suffix}", phantom(128))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("make, reason", [
    (lambda p: p / "missing.jpeg", "not found"),
    (lambda p: (p / "empty.jpeg").write_bytes(b"") or p / "empty.jpeg", "empty"),
    (lambda p: (p / "notes.jpeg").write_text("hello, I am text") and p / "notes.jpeg", "not an image"),
    (lambda p: _truncated(p, ".jpeg"), "truncated"),
    (lambda p: _truncated(p, ".png"), "truncated"),
    (lambda p: (p / "bomb.png").write_bytes(png_header_only(30000, 30000)) and p / "bomb.png",
     "too many pixels"),
    (lambda p: write_image(p / "strip.png", np.zeros((10, 400))), "too small"),
    (lambda p: p, "directory"),
])
def test_bad_input_raises_one_error_type_naming_file(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(XrayReadError) as info:
        read_xray(path)
    assert str(path) in str(info.value)
    assert reason in str(info.value)


def test_corrupt_jpeg_header_is_refused(tmp_path):
    path = write_image(tmp_path / "c.jpeg", phantom(128))
    data = bytearray(path.read_bytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 9] = 7  # an impossible number of colour components
    path.write_bytes(bytes(data))
    with pytest.raises(XrayReadError, match="c.jpeg"):
        read_xray(path)


def test_pixel_limit_is_configurable(tmp_path):
    path = write_image(tmp_path / "g.png", _gradient())
    with pytest.raises(XrayReadError, match="too many pixels"):
        read_xray(path, max_pixels=64 * 80 - 1)
    assert read_xray(path, max_pixels=64 * 80).shape == (64, 80)


def _dicom(path, pixels, photometric="MONOCHROME2", slope=1.0, intercept=0.0, window=None):
    pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if pixels is not None:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_dicom_monochrome2_reads(tmp_path):
    pixels = (np.tile(np.arange(64), (48, 1)) * 60).astype(np.uint16)
    out = read_xray(_dicom(tmp_path / "a.dcm", pixels))
    np.testing.assert_allclose(out, pixels / pixels.max(), atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path):
    pixels = (np.tile(np.arange(64), (48, 1)) * 60).astype(np.uint16)
    mono2 = read_xray(_dicom(tmp_path / "a.dcm", pixels))
    mono1 = read_xray(_dicom(tmp_path / "b.dcm", pixels, photometric="MONOCHROME1"))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_dicom_window_is_applied(tmp_path):
    pixels = (np.tile(np.arange(64), (48, 1)) * 60).astype(np.uint16)  # 0 .. 3780
    out = read_xray(_dicom(tmp_path / "w.dcm", pixels, slope=2.0, intercept=-100.0,
                           window=(1000.0, 400.0)))
    values = pixels * 2.0 - 100.0
    assert np.all(out[:, values[0] <= 800] == 0)     # below the window -> black
    assert np.all(out[:, values[0] >= 1200] == 1)    # above the window -> white
    inside = out[0, (values[0] > 820) & (values[0] < 1180)]
    assert np.all(np.diff(inside) > 0)               # monotone ramp inside


def test_dicom_without_pixels_is_refused(tmp_path):
    path = _dicom(tmp_path / "n.dcm", np.zeros((48, 64), np.uint16))
    import pydicom
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(str(path))
    with pytest.raises(XrayReadError, match="no pixel data"):
        read_xray(path)


def test_read_images_step(tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", phantom(64, seed=i)) for i in range(3)]
    images = ReadImages().fit(paths).transform(paths)
    assert [im.shape for im in images] == [(64, 64)] * 3
    np.testing.assert_array_equal(images[1], read_xray(paths[1]))


# ---- hostile files (issue #18): bounded reads, decode-work bounds, clear errors ----------

def _png_rows(path, width, height, data_rows):
    """An 8-bit grey PNG of zeros whose header says ``height`` rows but whose
    image data holds ``data_rows`` rows (more than the header needs)."""
    row = b"\0" * (width + 1)

    def block(n):  # independent raw-deflate blocks, byte-aligned, so they can be repeated
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        return compressor.compress(row * n) + compressor.flush(zlib.Z_FULL_FLUSH)

    adler = ((data_rows * len(row)) % 65521) << 16 | 1  # adler32 of all-zero data
    body = ([b"\x78\xda"] + [block(1000)] * (data_rows // 1000) + [block(data_rows % 1000)]
            + [zlib.compressobj(9, zlib.DEFLATED, -15).flush(), struct.pack(">I", adler)])
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", b"".join(body)) + _png_chunk(b"IEND", b""))
    return path


def test_png_whose_data_inflates_past_its_header_is_refused(tmp_path):
    # 1 GB of zero rows behind a 4000 x 4000 header (16 MB): refused after
    # inflating what the header needs, not decoded
    path = _png_rows(tmp_path / "inflated.png", 4000, 4000, data_rows=250_000)
    assert path.stat().st_size < 2_000_000
    with pytest.raises(XrayReadError, match="inflates to more than the 16,004,000 bytes"):
        read_xray(path)
    exact = _png_rows(tmp_path / "exact.png", 40, 50, data_rows=50)
    assert read_xray(exact).shape == (50, 40)


def _scans(jpeg, copies):
    """``jpeg`` with its last scan repeated ``copies`` more times before EOI."""
    start = jpeg.rfind(b"\xff\xda")
    end = jpeg.rfind(b"\xff\xd9")
    return jpeg[:end] + jpeg[start:end] * copies + jpeg[end:]


def test_jpeg_with_too_many_scans_is_refused_before_decoding(tmp_path):
    buffer = (phantom(96) * 255).astype(np.uint8)
    progressive = tmp_path / "progressive.jpg"
    Image.fromarray(buffer).save(progressive, progressive=True, quality=90)
    assert 1 < progressive.read_bytes().count(b"\xff\xda") < 20
    assert read_xray(progressive).shape == (96, 96)  # a normal progressive JPEG reads
    bomb = tmp_path / "scans.jpg"
    bomb.write_bytes(_scans(progressive.read_bytes(), 10_000))
    with pytest.raises(XrayReadError, match=r"too much decoding work: 10,0\d\d JPEG scans"):
        read_xray(bomb)


def test_jpeg_with_over_1mb_of_metadata_before_the_frame_reads(tmp_path):
    path = tmp_path / "plain.jpg"
    cv2.imwrite(str(path), (phantom(96) * 255).astype(np.uint8))
    data = path.read_bytes()
    app = b"\xff\xe1" + struct.pack(">H", 60_002) + b"x" * 60_000
    meta = tmp_path / "metadata.jpg"
    meta.write_bytes(data[:2] + app * 20 + data[2:])  # 1.2 MB of APP1 before the SOF
    np.testing.assert_array_equal(read_xray(meta), read_xray(path))


_READ_EACH = """
import sys
from xray_features.io import XrayReadError, read_xray
for path in sys.argv[1:]:
    try:
        read_xray(path)
        print("read", path)
    except XrayReadError as exc:
        print(exc)
"""


def _limit_memory():  # in the child: a reader that reads /dev/zero fails fast, not the machine
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_fifos_and_devices_are_refused_without_reading(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "fifo.png").symlink_to(tmp_path / "pipe")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    paths = [tmp_path / "fifo.png", tmp_path / "pipe", tmp_path / "zero.png", "/dev/zero"]
    # a FIFO would block open() forever, /dev/zero never end: run in a child with a timeout
    done = subprocess.run([sys.executable, "-c", _READ_EACH, *map(str, paths)],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                          text=True, timeout=120, preexec_fn=_limit_memory)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines == [f"{paths[0]}: not a regular file: a FIFO (named pipe)",
                     f"{paths[1]}: not a regular file: a FIFO (named pipe)",
                     f"{paths[2]}: not a regular file: a character device",
                     "/dev/zero: not a regular file: a character device"]


def test_a_file_over_the_size_limit_is_refused_from_its_size(tmp_path):
    path = write_image(tmp_path / "big.png", phantom(64))
    with open(path, "r+b") as handle:  # sparse: 300 MB on paper, a few KB on disk
        handle.truncate(300 << 20)
    with pytest.raises(XrayReadError, match=r"file too large: 314,572,800 bytes > limit"):
        read_xray(path)
    with pytest.raises(XrayReadError, match="file too large"):
        read_xray(write_image(tmp_path / "small.png", phantom(64)), max_bytes=100)


def test_a_name_with_a_nul_byte_is_an_error_naming_it():
    with pytest.raises(XrayReadError) as info:
        read_xray("bad\0name.png")
    assert str(info.value).startswith("bad\0name.png: invalid file name")


def test_memory_error_while_decoding_is_a_read_error(tmp_path, monkeypatch):
    from xray_features import io as xio

    path = write_image(tmp_path / "x.png", phantom(64))

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(xio.cv2, "imdecode", no_memory)
    with pytest.raises(XrayReadError, match="not enough memory"):
        read_xray(path)


def test_dicom_messages_carry_no_memory_addresses(tmp_path, monkeypatch):
    import pydicom

    path = _dicom(tmp_path / "a.dcm", np.zeros((48, 64), np.uint16) + 7)

    def broken(*args, **kwargs):
        raise ValueError("bad element in <pydicom.dataset.Dataset object at 0x7f3a2c1b9e50>")

    monkeypatch.setattr(pydicom, "dcmread", broken)
    with pytest.raises(XrayReadError) as info:
        read_xray(path)
    assert "0x" not in str(info.value) and "bad element" in str(info.value)
