"""What a DICOM header says about a film, checked against what the model was
trained on: frontal (AP) chest radiographs of children aged 1 to 5.

`header_of` takes the fields scoring needs from a pydicom dataset;
`header_warnings` gives the reasons a film should be flagged rather than
silently scored; `parse_age` reads a DICOM age string (``067Y``, ``018M``,
``010D``, ``003W``).
"""

from __future__ import annotations

import re

__all__ = ["HEADER_FIELDS", "ID_FIELDS", "RADIOGRAPH_MODALITIES", "FRONTAL_VIEWS",
           "AGE_RANGE_YEARS", "header_of", "parse_age", "header_warnings"]

ID_FIELDS = ("SOPInstanceUID", "StudyInstanceUID", "AccessionNumber")
"""Identifiers that join a row back to the hospital's records."""

HEADER_FIELDS = ("Modality", "BodyPartExamined", "ViewPosition", "PatientAge") + ID_FIELDS

RADIOGRAPH_MODALITIES = ("CR", "DX", "DR")
"""Computed and digital radiography (DR is not a DICOM code, but some devices write it)."""

FRONTAL_VIEWS = ("PA", "AP")

AGE_RANGE_YEARS = (0.0, 17.0)
"""Ages (inclusive, in years, 17 meaning under 18) scored without a warning. The
model was trained on children aged 1 to 5; outside childhood it is a different
population, so the range is wider than the training ages but not adult."""

_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.IGNORECASE)
_DAYS_PER = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


def header_of(dataset):
    """The `HEADER_FIELDS` of a pydicom dataset as stripped strings ('' when
    absent or unreadable).

    Parameters
    ----------
    dataset : pydicom.dataset.Dataset

    Returns
    -------
    dict of str to str
    """
    header = {}
    for field in HEADER_FIELDS:
        try:
            value = dataset.get(field, "")
        except Exception:  # a corrupt element: treated as absent
            value = ""
        header[field] = "" if value is None else str(value).strip()
    return header


def parse_age(text):
    """A DICOM age string (``nnnD``, ``nnnW``, ``nnnM`` or ``nnnY``) in years.

    Parameters
    ----------
    text : str

    Returns
    -------
    float or None
        None when ``text`` is empty or not an age string.

    Examples
    --------
    >>> parse_age("067Y"), parse_age("018M"), round(parse_age("010D"), 4)
    (67.0, 1.5, 0.0274)
    """
    match = _AGE.match(text or "")
    if not match:
        return None
    return int(match.group(1)) * _DAYS_PER[match.group(2).upper()] / 365.25


def header_warnings(header):
    """Why a DICOM's header says the film is not what the model was trained on.

    Parameters
    ----------
    header : dict of str to str
        From `header_of`.

    Returns
    -------
    list of str
        Empty when every field is as expected or absent: Modality CR/DX/DR,
        BodyPartExamined CHEST, ViewPosition PA/AP, PatientAge within
        `AGE_RANGE_YEARS` (an age string that cannot be read counts as absent).
    """
    reasons = []
    modality = header.get("Modality", "").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        reasons.append(f"Modality {modality} is not a radiograph (expected CR, DX or DR)")
    body_part = header.get("BodyPartExamined", "").upper()
    if body_part and body_part != "CHEST":
        reasons.append(f"BodyPartExamined {body_part}, not CHEST")
    view = header.get("ViewPosition", "").upper()
    if view and view not in FRONTAL_VIEWS:
        kind = "a lateral view" if view in ("LATERAL", "LL", "RL", "LAT") else "not a frontal view"
        reasons.append(f"ViewPosition {view} is {kind} (the model was trained on AP/PA films)")
    age = parse_age(header.get("PatientAge", ""))
    low, high = AGE_RANGE_YEARS
    if age is not None and not (low <= age < high + 1):
        reasons.append(f"PatientAge {header['PatientAge']} ({age:.3g} years) is outside "
                       f"{low:.0f}-{high:.0f} years (the model was trained on children aged 1-5)")
    return reasons
