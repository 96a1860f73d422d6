"""DICOM-aware scoring (issue #22, part 2): one intensity convention for DICOM
and 8-bit images (the same film scores the same as DICOM, PNG and JPEG),
header checks that give ``status=warning`` with the reason, and the DICOM
identifier columns."""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipelines import score
from xray_features.dicom import header_warnings, parse_age
from xray_features.io import dicom_unit_scale, read_xray, read_xray_and_header

from .conftest import phantom, write_image
from .test_bad_inputs import write_dicom
from .test_subtype_run import subtype_run  # noqa: F401  (the fixture)

PAIR_TOLERANCE = 1e-6
"""|ΔP| between a film as DICOM and the same pixels as PNG (or as the JPEG
they were decoded from): the reader gives identical arrays, so only float
noise is allowed. Before, a DICOM was min-max stretched: ΔP up to 0.016."""

JPEG_TOLERANCE = 0.01
"""|ΔP| between a film as DICOM and re-encoded as JPEG quality 95: JPEG loss
(measured at most 0.006 on a phantom and 8 site_val films)."""


def _dicom(path, pixels, bits=8, **kwargs):
    """A MONOCHROME DICOM of ``pixels``, 8-bit unless ``bits=16`` (12 bits stored)."""
    return write_dicom(path, pixels, bits=bits, **kwargs)


def _film():
    """An 8-bit phantom film that does not span 0-255 (a min-max stretch changes it)."""
    return (phantom(224) * 255).round().astype(np.uint8)


def _scores(paths, out, model=None):
    args = [str(p) for p in paths] + ["--out", str(out), "--quiet"]
    code = score.main(args + (["--model", str(model)] if model else []))
    with open(out, newline="") as handle:
        return code, list(csv.DictReader(handle))


# ---- one intensity convention ----------------------------------------------------------------

def test_an_8_bit_film_reads_the_same_as_dicom_and_as_png(tmp_path):
    film = _film()
    png = tmp_path / "film.png"
    cv2.imwrite(str(png), film)
    expected = read_xray(png)
    assert film.max() < 255  # so a min-max stretch would differ
    for dicom in (_dicom(tmp_path / "8.dcm", film),
                  _dicom(tmp_path / "12.dcm", film.astype(np.uint16) * 16, bits=16,
                         slope=1 / 16, window=(128, 256))):
        np.testing.assert_array_equal(read_xray(dicom), expected)


def test_the_same_film_as_dicom_png_and_jpeg_scores_within_tolerance(tmp_path):
    """Through the packaged default model and the score command."""
    film = _film()
    png, jpeg = tmp_path / "film.png", tmp_path / "film.jpeg"
    cv2.imwrite(str(png), film)
    cv2.imwrite(str(jpeg), film, [cv2.IMWRITE_JPEG_QUALITY, 95])
    dicom8 = _dicom(tmp_path / "film8.dcm", film)
    dicom12 = _dicom(tmp_path / "film12.dcm", film.astype(np.uint16) * 16, bits=16,
                     slope=1 / 16, window=(128, 256))
    code, rows = _scores([png, jpeg, dicom8, dicom12], tmp_path / "s.csv")
    assert code == score.EXIT_OK
    p = [float(r["probability"]) for r in rows]
    assert abs(p[2] - p[0]) <= PAIR_TOLERANCE and abs(p[3] - p[0]) <= PAIR_TOLERANCE
    assert abs(p[2] - p[1]) <= JPEG_TOLERANCE


def test_real_films_score_the_same_as_jpeg_and_as_dicom(data_root, tmp_path):
    films = sorted((data_root / "site_val").rglob("*.jpeg"))[::60][:4]
    dicoms = []
    for i, path in enumerate(films):
        pixels = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        dicoms.append(_dicom(tmp_path / f"{i}.dcm", pixels))
    code, rows = _scores(films + dicoms, tmp_path / "s.csv")
    assert code == score.EXIT_OK
    p = np.array([float(r["probability"]) for r in rows])
    np.testing.assert_allclose(p[len(films):], p[:len(films)], atol=PAIR_TOLERANCE)


def test_the_dicom_window_maps_to_0_1_and_8_bit_films_divide_by_255():
    values = np.arange(256, dtype=np.float64)
    np.testing.assert_allclose(dicom_unit_scale(values, (128, 256), 12), values / 255)
    np.testing.assert_allclose(dicom_unit_scale(values, None, 8), values / 255)
    ramp = np.array([100.0, 300.0, 4000.0])  # 12-bit without a window: min-max, as before
    np.testing.assert_allclose(dicom_unit_scale(ramp, None, 12), (ramp - 100) / 3900)
    sigmoid = dicom_unit_scale(np.array([0.0, 500.0, 1000.0]), (500, 200), 12, "SIGMOID")
    assert sigmoid[0] < 0.01 and sigmoid[1] == 0.5 and sigmoid[2] > 0.99


def test_monochrome1_is_inverted_after_the_window(tmp_path):
    film = _film()
    mono2 = read_xray(_dicom(tmp_path / "2.dcm", film))
    mono1 = read_xray(_dicom(tmp_path / "1.dcm", film, photometric="MONOCHROME1"))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


# ---- header checks and identifiers -----------------------------------------------------------

def test_dicom_age_strings():
    assert parse_age("067Y") == 67 and parse_age("018M") == 1.5
    assert parse_age("003W") == pytest.approx(21 / 365.25)
    assert parse_age("010D") == pytest.approx(10 / 365.25)
    assert parse_age("") is None and parse_age("sixty") is None
    assert header_warnings({"PatientAge": "017Y"}) == []
    assert header_warnings({"PatientAge": "000D"}) == []
    assert "outside 0-17 years" in header_warnings({"PatientAge": "018Y"})[0]


def test_headers_that_are_not_a_child_s_frontal_chest_film_give_warnings(trained_run, tmp_path,
                                                                          monkeypatch, capsys):
    model = trained_run / "models" / "hog-logreg.joblib"
    film = _film()
    folder = tmp_path / "in"
    folder.mkdir()
    ids = {"StudyInstanceUID": "1.2.3.4", "AccessionNumber": "=ACC1+1"}
    _dicom(folder / "a_clean.dcm", film, ViewPosition="PA", PatientAge="003Y",
           BodyPartExamined="CHEST", **ids)
    _dicom(folder / "b_bare.dcm", film)
    _dicom(folder / "c_lateral.dcm", film, ViewPosition="LL")
    _dicom(folder / "d_adult.dcm", film, PatientAge="067Y")
    _dicom(folder / "e_knee.dcm", film, BodyPartExamined="KNEE")
    _dicom(folder / "f_mri.dcm", film, Modality="MR")
    write_image(folder / "g_film.png", phantom(224))
    out = tmp_path / "s.csv"
    capsys.readouterr()
    code, rows = _scores([folder], out, model)
    assert code == score.EXIT_OK  # warnings are scored: they do not make the exit code 1
    byname = {Path(r["path"]).name: r for r in rows}
    assert [byname[n]["status"] for n in sorted(byname)] == \
        ["ok", "ok", "warning", "warning", "warning", "warning", "ok"]
    assert "ViewPosition LL is a lateral view" in byname["c_lateral.dcm"]["error"]
    assert "PatientAge 067Y (67 years)" in byname["d_adult.dcm"]["error"]
    assert "BodyPartExamined KNEE" in byname["e_knee.dcm"]["error"]
    assert "Modality MR" in byname["f_mri.dcm"]["error"]
    for r in rows:  # warnings are scores, with a reason
        assert r["prediction"] in score.LABEL_NAMES and float(r["probability"]) >= 0
        assert bool(r["error"]) == (r["status"] == "warning")
    import pydicom

    clean = byname["a_clean.dcm"]
    assert clean["sop_instance_uid"] == pydicom.dcmread(folder / "a_clean.dcm").SOPInstanceUID
    # escaped for spreadsheets (and read back unescaped by the resume below)
    assert (clean["study_instance_uid"], clean["accession_number"]) == ("1.2.3.4", "'=ACC1+1")
    assert byname["g_film.png"]["sop_instance_uid"] == ""
    assert "4 warnings" in capsys.readouterr().err
    assert json.loads(score.run_record_path(out).read_text())["warnings"] == 4
    seen = []
    real = score.score_paths
    monkeypatch.setattr(score, "score_paths",
                        lambda m, p, **kw: seen.extend(p) or real(m, p, **kw))
    before = out.read_bytes()
    assert score.main([str(folder), "--model", str(model), "--out", str(out), "--quiet",
                       "--retry-errors"]) == score.EXIT_OK
    assert seen == [] and out.read_bytes() == before  # warning rows are kept, not retried


def test_read_xray_and_header_gives_none_for_png(tmp_path):
    png = write_image(tmp_path / "x.png", phantom(64))
    image, header = read_xray_and_header(png)
    assert header is None
    np.testing.assert_array_equal(image, read_xray(png))


def test_three_class_rows_get_warnings_and_identifiers(subtype_run, tmp_path):
    data, out = subtype_run
    lateral = _dicom(tmp_path / "lat.dcm", _film(), ViewPosition="LATERAL", AccessionNumber="A7")
    code, rows = _scores([lateral], tmp_path / "s.csv", out / "models" / "hog-logreg.joblib")
    assert code == score.EXIT_OK
    assert rows[0]["status"] == "warning" and "lateral" in rows[0]["error"]
    assert rows[0]["accession_number"] == "A7" and rows[0]["prediction"]
