"""A corpus of bad (and awkward but valid) inputs, generated here, through
`python -m pipelines.score`: one row each, ok or a clear error, bounded memory."""

import csv
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipelines import score
from xray_features import io as xio
from xray_features.io import XrayReadError, read_xray

from .conftest import phantom, write_image

ROOT = Path(__file__).resolve().parent.parent


# ---- file makers (also used by test_fuzz_reader) -------------------------------------------

def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_zero_png(path, width, height, rows_per_idat=1000):
    """A valid 8-bit grey PNG of zeros, written in O(height) time and a few MB.

    Each row is compressed once with a full flush (byte-aligned, no shared
    history), so the same bytes can be repeated for every row; the zlib
    trailer is the adler32 of all-zero data: a = 1, b = length mod 65521.
    """
    raw_row = b"\0" * (width + 1)  # filter byte + one byte per pixel
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    row = compressor.compress(raw_row) + compressor.flush(zlib.Z_FULL_FLUSH)
    final_block = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    adler = ((height * len(raw_row)) % 65521) << 16 | 1
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                        8, 0, 0, 0, 0)))
        handle.write(_chunk(b"IDAT", b"\x78\xda"))  # zlib header
        for start in range(0, height, rows_per_idat):
            handle.write(_chunk(b"IDAT", row * min(rows_per_idat, height - start)))
        handle.write(_chunk(b"IDAT", final_block + struct.pack(">I", adler)) + _chunk(b"IEND", b""))
    return Path(path)


def write_dicom(path, pixels=None, photometric="MONOCHROME2", bits=16, slope=None, window=None,
                **tags):
    """A small uncompressed DICOM, 16-bit with 12 bits stored (``bits=8``: 8-bit);
    ``pixels=None`` leaves out PixelData; ``slope`` (intercept 0), ``window``
    (center, width) and other ``tags`` (``ViewPosition="LL"``) are set when given."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    shape = (96, 96) if pixels is None else pixels.shape
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = (8, 8, 7) if bits == 8 else (16, 12, 11)
    ds.PixelRepresentation = 0
    if pixels is not None:
        dtype = np.uint8 if bits == 8 else "<u2"
        ds.PixelData = np.ascontiguousarray(pixels, dtype=dtype).tobytes()
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    for tag, value in tags.items():
        setattr(ds, tag, value)
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def encoded(image01, ext, **params):
    flags = [cv2.IMWRITE_JPEG_QUALITY, 90] if ext == ".jpg" else []
    ok, buffer = cv2.imencode(ext, (np.clip(image01, 0, 1) * 255).round().astype(np.uint8), flags)
    assert ok
    return buffer.tobytes()


IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def build_corpus(folder):
    """Write the corpus into ``folder``; returns {file name: "ok" or an error phrase}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image = phantom(96, seed=3)
    grey8 = (image * 255).round().astype(np.uint8)
    expect = {}

    def put(name, data, expected):
        (folder / name).write_bytes(data)
        expect[name] = expected

    jpeg, png = encoded(image, ".jpg"), encoded(image, ".png")
    put("empty.png", b"", "empty file")
    put("truncated.jpg", jpeg[: len(jpeg) // 2], "truncated JPEG")
    put("truncated.png", png[: len(png) // 2], "truncated PNG")
    put("notes.jpeg", b"Patient notes: not a picture.\n" * 20, "not an image")
    put("really a png.jpg", png, "ok")
    write_image(folder / "sixteen_bit.png", image, bits=16)
    expect["sixteen_bit.png"] = "ok"
    for name, mode in (("rgba.png", "RGBA"), ("palette.png", "P"), ("cmyk.jpg", "CMYK")):
        Image.fromarray(grey8).convert(mode).save(folder / name)
        expect[name] = "ok"
    put("one_pixel.png", encoded(np.zeros((1, 1)), ".png"), "too small")
    put("strip.png", encoded(np.full((4000, 10), 0.5), ".png"), "too small")
    write_zero_png(folder / "bomb.png", 30_000, 30_000)
    expect["bomb.png"] = "too many pixels"
    write_dicom(folder / "mono1.dcm", (grey8.astype(np.uint16) * 16), "MONOCHROME1")
    expect["mono1.dcm"] = "ok"
    write_dicom(folder / "no_pixels.dcm", None)
    expect["no_pixels.dcm"] = "no pixel data"
    os.symlink("loop_b.png", folder / "loop_a.png")
    os.symlink("loop_a.png", folder / "loop_b.png")
    expect["loop_a.png"] = expect["loop_b.png"] = "symbolic links"
    put("chest x-ray ñandú 肺.png", png, "ok")
    if not IS_ROOT:  # root reads a mode-000 file; see test_unreadable_file_*
        put("locked.png", png, "permission denied")
        os.chmod(folder / "locked.png", 0)
    return expect


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad") / "corpus"
    return folder, build_corpus(folder)


@pytest.fixture
def model_path(trained_run):
    return trained_run / "models" / "hog-logreg.joblib"


# A child process: load the model, note peak RSS, score, note peak RSS again.
_MEASURE = """
import json, resource, sys
from pipelines import score
from pipelines.persist import load_model
load_model(sys.argv[1])  # imports and model in memory before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
code = score.main(sys.argv[2:])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"code": code, "before_kb": before, "after_kb": after}))
"""


def test_corpus_scores_one_row_each_in_bounded_memory(corpus, model_path, tmp_path):
    folder, expect = corpus
    out = tmp_path / "scores.csv"
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(model_path), str(folder), "--model", str(model_path),
         "--out", str(out), "--quiet", "--batch-size", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == score.EXIT_SOME_FAILED
    growth_mb = (result["after_kb"] - result["before_kb"]) / 1024
    # decoding the bomb would take 900 MB (uint8) and 3.6 GB (float32)
    assert growth_mb < 64, f"peak RSS grew by {growth_mb:.0f} MB while scoring the corpus"

    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    names = [Path(r["path"]).name for r in rows]
    assert sorted(names) == sorted(expect), "every input must get exactly one row"
    for row in rows:
        name, expected = Path(row["path"]).name, expect[Path(row["path"]).name]
        if expected == "ok":
            assert row["status"] == "ok", (name, row["error"])
            assert 0.0 <= float(row["probability"]) <= 1.0
            assert row["prediction"] in ("NORMAL", "PNEUMONIA") and row["error"] == ""
        else:
            assert row["status"] == "error", name
            assert expected in row["error"], (name, row["error"])
            assert row["error"].startswith(row["path"]), "the reason names the file"
            assert row["probability"] == row["prediction"] == ""


def test_bomb_is_a_real_png_and_is_refused_from_its_header(tmp_path):
    # the same construction, small: a valid zlib stream (zlib checks adler32) of zero rows
    small = write_zero_png(tmp_path / "small.png", 70, 50, rows_per_idat=7)
    data = small.read_bytes()
    idat, pos = b"", 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        if data[pos + 4:pos + 8] == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    assert zlib.decompress(idat) == b"\0" * (71 * 50)
    assert read_xray(small).shape == (50, 70)
    bomb = write_zero_png(tmp_path / "bomb.png", 30_000, 30_000)
    assert bomb.stat().st_size < 4_000_000
    with pytest.raises(XrayReadError, match=r"too many pixels: 30000x30000 = 900,000,000"):
        read_xray(bomb)


def test_awkward_valid_images_read_right(corpus):
    folder, _ = corpus
    reference = read_xray(folder / "really a png.jpg")
    for name in ("rgba.png", "palette.png", "sixteen_bit.png", "chest x-ray ñandú 肺.png"):
        np.testing.assert_allclose(read_xray(folder / name), reference, atol=1 / 255 + 1e-6)
    assert np.abs(read_xray(folder / "cmyk.jpg") - reference).mean() < 0.02
    # MONOCHROME1: high values are dark, so the reader inverts them
    mono1 = read_xray(folder / "mono1.dcm")
    scaled = (reference - reference.min()) / (reference.max() - reference.min())
    np.testing.assert_allclose(mono1, 1 - scaled, atol=1e-5)


@pytest.mark.skipif(IS_ROOT, reason="running as root: mode 000 does not stop root reading a "
                    "file; test_unreadable_file_simulated covers the error path")
def test_unreadable_file_real(tmp_path):
    path = write_image(tmp_path / "locked.png", phantom(64))
    os.chmod(path, 0)
    with pytest.raises(XrayReadError, match="permission denied"):
        read_xray(path)


def test_unreadable_file_simulated(tmp_path, model_path, monkeypatch):
    from pipelines.persist import load_model

    path = str(write_image(tmp_path / "locked.png", phantom(64)))
    good = str(write_image(tmp_path / "fine.png", phantom(64, seed=1)))
    real_open = open

    def guarded_open(file, *args, **kwargs):
        if str(file) == path:
            raise PermissionError(13, "Permission denied", path)
        return real_open(file, *args, **kwargs)

    model, _ = load_model(model_path)
    monkeypatch.setattr(xio, "open", guarded_open, raising=False)
    rows = score.score_paths(model, [path, good])
    assert rows[0]["status"] == "error" and rows[0]["error"] == f"{path}: permission denied"
    assert rows[1]["status"] == "ok"
