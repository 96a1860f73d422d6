"""Fuzz `read_xray`: random bytes, truncations and bit flips of valid JPEG, PNG and
DICOM files. It returns a sane image or raises XrayReadError, nothing else."""

import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xray_features.io import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, XrayReadError, read_xray

from .conftest import phantom
from .test_bad_inputs import write_dicom

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _valid_files():
    image = phantom(64, seed=7)
    grey8 = (image * 255).round().astype(np.uint8)
    files = {
        "jpeg": cv2.imencode(".jpg", grey8, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes(),
        "png": cv2.imencode(".png", grey8)[1].tobytes(),
        "png16": cv2.imencode(".png", grey8.astype(np.uint16) * 257)[1].tobytes(),
    }
    with tempfile.TemporaryDirectory() as folder:
        path = write_dicom(Path(folder) / "x.dcm", grey8.astype(np.uint16) * 16, "MONOCHROME1")
        files["dicom"] = path.read_bytes()
    return files


VALID = _valid_files()
KINDS = sorted(VALID)


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder) / "fuzz.bin"


def check_read(path, data):
    path.write_bytes(data)
    try:
        image = read_xray(path)
    except XrayReadError as exc:
        assert str(exc).startswith(str(path)) and exc.reason
        return
    assert image.ndim == 2 and image.dtype == np.float32 and image.flags.c_contiguous
    assert min(image.shape) >= DEFAULT_MIN_SIDE and image.size <= DEFAULT_MAX_PIXELS
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0


def test_valid_files_read(scratch):
    for kind in KINDS:
        scratch.write_bytes(VALID[kind])
        assert read_xray(scratch).shape == (64, 64), kind


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes(scratch, data):
    check_read(scratch, data)


@FUZZ
@given(magic=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\0" * 128 + b"DICM"]),
       tail=st.binary(max_size=2048))
def test_random_bytes_after_a_magic_number(scratch, magic, tail):
    check_read(scratch, magic + tail)


@FUZZ
@given(kind=st.sampled_from(KINDS), cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncations(scratch, kind, cut):
    data = VALID[kind]
    check_read(scratch, data[: int(len(data) * cut)])


@FUZZ
@given(kind=st.sampled_from(KINDS), bits=st.lists(st.floats(0.0, 1.0, exclude_max=True),
                                                  min_size=1, max_size=6))
def test_bit_flips(scratch, kind, bits):
    data = bytearray(VALID[kind])
    for where in bits:
        bit = int(where * len(data) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
    check_read(scratch, bytes(data))


@FUZZ
@given(kind=st.sampled_from(KINDS), offset=st.floats(0.0, 1.0, exclude_max=True),
       junk=st.binary(min_size=1, max_size=16))
def test_overwritten_bytes(scratch, kind, offset, junk):
    data = bytearray(VALID[kind])
    start = int(offset * len(data))
    data[start:start + len(junk)] = junk
    check_read(scratch, bytes(data))


def test_dicom_element_with_unknown_vr(scratch):
    # found by fuzzing: pydicom raised NotImplementedError on first access to the element
    data = bytearray(VALID["dicom"])
    tag = data.find(b"\x28\x00\x04\x00CS")  # (0028,0004) PhotometricInterpretation, VR CS
    data[tag + 4:tag + 6] = b"CW"
    scratch.write_bytes(bytes(data))
    with pytest.raises(XrayReadError, match="corrupt DICOM: NotImplementedError"):
        read_xray(scratch)
