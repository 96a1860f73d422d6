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
    (lambda p: (p / "empty.jpeg").write_bytes(b"") and p / "empty.jpeg", "empty"),
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
