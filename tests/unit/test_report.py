"""Per-study reports (``naslung score --report``): the DICOM SR read back with pydicom and highdicom, the PDF
rendered to images with pypdfium2.

Scans are the real LIDC MetaImage ROIs of ../shared (read where they lie, never copied into the checkout);
the DICOM-input path writes one of them as DICOM series (SimpleITK) into a temporary folder. Scoring runs
in-process (:func:`naslung.score_csv.score_csv` with a plain Python scorer that answers from the patch and
returns the patch itself as its CAM), so every report cell can be traced to a results CSV row.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from naslung.params import PrepareParams, ServeParams
from naslung.report import reports_dir, write_reports
from naslung.report.pdf import (
    ERROR_LINES,
    OVERLAYS_PER_PAGE,
    TABLE_LINES,
    PdfHeader,
    page_count,
    table_pages,
    write_pdf,
)
from naslung.report.rows import ReportRow, read_results
from naslung.report.sr import LOCAL_CODES, LOCAL_SCHEME
from naslung.report.studies import derived_uid
from naslung.score_csv import score_csv
from naslung.scoring import encode_map

pdfium = pytest.importorskip("pypdfium2")

UID_A = "1.3.6.1.4.1.14519.5.2.1.6279.6001.170706757615202213033480003264"  # 246 x 251 x 51, z -254..-129 mm
UID_B = "1.3.6.1.4.1.14519.5.2.1.6279.6001.619372068417051974713149104919"  # 118 x 119 x 65, z -143..-63 mm
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
PREPARE = PrepareParams()
SERVE = replace(ServeParams(), request_patches=2, concurrency=1)
MODEL = "naslung-test-ensemble"


@pytest.fixture(scope="module")
def roi(shared_data: Path) -> Path:
    folder = shared_data / "LIDC-CT-concept-to-clinic" / "roi"
    if not (folder / f"{UID_A}.mhd").is_file() or not (folder / f"{UID_B}.mhd").is_file():
        pytest.skip(f"LIDC ROI scans not found in {folder}")
    return folder


def _answer(patch: np.ndarray) -> dict[str, Any]:
    prob = float(np.clip(patch.mean() * 1.5, 0.0, 1.0))
    return {
        "probability": prob,
        "raw_probability": prob * 0.9,
        "uncertainty": 0.05 + prob / 10,
        "refer": prob > 0.4,
        "label": int(prob > 0.3),
        "votes": 5 * int(prob > 0.3),
        "model_version": "3",
        "cam": encode_map(patch),
        "explain_target": 1,
    }


def _explain(patches: np.ndarray) -> list[dict[str, Any]]:
    return [_answer(p) for p in patches]


def _render(pdf: Path, scale: float = 1.0) -> list[np.ndarray]:
    """Every page of ``pdf`` as an RGB array (h, w, 3) uint8."""
    doc = pdfium.PdfDocument(str(pdf))
    try:
        return [np.asarray(page.render(scale=scale).to_pil().convert("RGB")) for page in doc]
    finally:
        doc.close()


def _ink(img: np.ndarray) -> float:
    """Fraction of dark pixels (text, lines)."""
    return float((img.mean(axis=2) < 128).mean())


def _colour(img: np.ndarray) -> float:
    """Fraction of strongly coloured pixels (the CAM's jet colours; text and the grey CT are not)."""
    rgb = img.astype(int)
    return float(((rgb.max(axis=2) - rgb.min(axis=2)) > 100).mean())


def _groups(path: Path) -> list[Any]:
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    return list(sr.content.get_volumetric_roi_measurement_groups())


def _finding(group: Any) -> dict[str, Any]:
    """Tracking id, point, frame of reference, probability (value, unit), label and algorithm of a group."""
    (prob,) = group.get_measurements(name=codes.DCM.ProbabilityOfCancer)
    (label,) = group.get_qualitative_evaluations(name=LOCAL_CODES["label"])
    (surface,) = [item for item in group.roi if item.name == codes.DCM.VolumeSurface]
    algorithm = {
        item.name.meaning: item.value for item in group[0].ContentSequence if item.name.value in ("111001", "111003")
    }
    return {
        "id": group.tracking_identifier,
        "point": np.array(surface.value, dtype=float).reshape(3),
        "for": surface.ReferencedFrameOfReferenceUID,
        "graphic": surface.graphic_type.value,
        "p": prob.value,
        "unit": (prob.unit.value, prob.unit.scheme_designator),
        "label": label.value,
        "algorithm": algorithm,
    }


def _score(tmp: Path, roi: Path, rows: list[dict[str, Any]]) -> Path:
    csv, out = tmp / "nodules.csv", tmp / "results.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    s = score_csv(csv, roi, out, None, PREPARE, SERVE, progress=False, explain=True, explain_predict=_explain)
    assert s.file_error is None
    return out


def test_metaimage_reports_one_sr_and_pdf_per_series_with_every_row(roi: Path, tmp_path: Path) -> None:
    rows = [
        {"nodule_id": "a1", "seriesuid": UID_A, "coordX": 72.28670656, "coordY": 76.90023946, "coordZ": -190.4589276},
        {"nodule_id": "b1", "seriesuid": UID_B, "coordX": 60.0, "coordY": 72.0, "coordZ": -103.0},
        {"nodule_id": "a-out", "seriesuid": UID_A, "coordX": 0.0, "coordY": 0.0, "coordZ": 500.0},
        {"nodule_id": "a2", "seriesuid": UID_A, "coordX": 23.49083071, "coordY": -47.63390567, "coordZ": -172.2791417},
        {"nodule_id": "x", "seriesuid": "1.2.3.4.unknown", "coordX": 0.0, "coordY": 0.0, "coordZ": 0.0},
        {"nodule_id": "esc", "seriesuid": "../roi/" + UID_A, "coordX": 0.0, "coordY": 0.0, "coordZ": 0.0},
        {"nodule_id": "a3", "seriesuid": UID_A, "coordX": -47.40284557, "coordY": -30.171209, "coordZ": -169.6239465},
    ]
    out = _score(tmp_path, roi, rows)
    results = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(results["status"]) == ["ok", "ok", "error", "ok", "error", "error", "ok"]

    reports = write_reports(out, roi, model_name=MODEL)
    base = reports_dir(out)
    assert base == tmp_path / "results_reports"
    # one study per series, in order of first appearance; every row in exactly one report
    assert [r.key for r in reports] == [UID_A, UID_B, "1.2.3.4.unknown", "../roi/" + UID_A]
    assert sum(r.n_rows for r in reports) == len(rows) and [r.n_ok for r in reports] == [3, 1, 0, 0]
    a, b, unknown, escape = reports
    assert a.folder == base / UID_A and a.sr == base / UID_A / "report.dcm" and a.pdf == base / UID_A / "report.pdf"
    assert unknown.sr is None and "no scan found" in unknown.sr_note and unknown.pdf.is_file()
    # an escaping uid names a folder inside the reports folder only
    assert escape.folder.parent == base and escape.folder.name == "roi_" + UID_A and escape.sr is None
    assert sorted(p.name for p in base.iterdir()) == sorted([UID_A, UID_B, "1.2.3.4.unknown", "roi_" + UID_A])

    # The SR: pydicom reads it, it is a Comprehensive 3D SR of the study derived from the series uid,
    # it names no (non-existent) instances, and highdicom finds one finding per ok row.
    ds = pydicom.dcmread(a.sr)
    assert ds.SOPClassUID == COMPREHENSIVE_3D_SR and ds.Modality == "SR"
    assert ds.StudyInstanceUID == derived_uid("study", UID_A) and ds.StudyInstanceUID.startswith("2.25.")
    assert "CurrentRequestedProcedureEvidenceSequence" not in ds and ds.PatientID == ""
    assert ds.CompletionFlag == "PARTIAL" and ds.VerificationFlag == "UNVERIFIED"  # a-out is an error row
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == LOCAL_SCHEME
    found = [_finding(g) for g in _groups(a.sr)]
    ok_a = results[(results["seriesuid"] == UID_A) & (results["status"] == "ok")]
    assert [f["id"] for f in found] == [f"nodule {n}" for n in ok_a["nodule_id"]]
    for f, (_, r) in zip(found, ok_a.iterrows()):
        assert f["p"] == pytest.approx(float(r["probability"]), abs=1e-12) and f["unit"] == ("1", "UCUM")
        assert f["label"] == (codes.SCT.Malignant if r["label"] == "1" else codes.SCT.Benign)
        want = [float(r[c]) for c in ("coordX", "coordY", "coordZ")]
        assert f["graphic"] == "POINT" and np.allclose(f["point"], want, atol=1e-4)
        assert f["for"] == derived_uid("frame-of-reference", UID_A)
        assert f["algorithm"] == {"Algorithm Name": MODEL, "Algorithm Version": "3"}
    sr_b = pydicom.dcmread(b.sr)
    assert sr_b.CompletionFlag == "COMPLETE" and len(_groups(b.sr)) == 1

    # The PDF: a table page (all 4 rows of series A, the error row too) and the overlays, 2 a page.
    study_rows = [r for r in read_results(out) if r.seriesuid == UID_A]
    pages = _render(a.pdf)
    assert len(pages) == page_count(study_rows) == 1 + math.ceil(3 / OVERLAYS_PER_PAGE) == 3
    table, overlay, last = pages
    assert table.std() > 10 and _ink(table) > 0.005  # text on white
    assert _colour(table) < 0.01 < _colour(overlay) and _colour(last) > 0.005  # CAM colours only on overlay pages
    # an error row is shaded light red in the table
    assert ((table[..., 0] > 240) & (table[..., 1] < 235) & (table[..., 1] > 210)).mean() > 0.001
    assert len(_render(unknown.pdf)) == 1  # no overlays: the table page only


def _write_dicom_series(image: sitk.Image, folder: Path, study: str, series: str, frame: str, number: int) -> None:
    """``image`` as one CT DICOM file per axial slice, with the given UIDs (SimpleITK / GDCM)."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    orientation = "\\".join(str(v) for v in (*direction[0:7:3], *direction[1:8:3]))
    for z in range(image.GetDepth()):
        sl = image[:, :, z]
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": str(generate_uid()),
            "0008|0060": "CT",
            "0010|0010": "Test^Patient",
            "0010|0020": "NASL-TEST-001",
            "0008|0020": "20260102",
            "0008|0050": "ACC42",
            "0020|000d": study,
            "0020|000e": series,
            "0020|0052": frame,
            "0020|0011": str(number),
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, z))),
            "0020|0037": orientation,
            "0018|0050": str(image.GetSpacing()[2]),
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_of_one_study_make_one_sr_with_their_instances_as_evidence(roi: Path, tmp_path: Path) -> None:
    image = sitk.ReadImage(str(roi / f"{UID_A}.mhd"))
    study, frame = str(generate_uid()), str(generate_uid())
    series = [str(generate_uid()), str(generate_uid())]
    scans = tmp_path / "dicom"
    for n, uid in enumerate(series, 1):
        _write_dicom_series(image, scans / f"series{n}", study, uid, frame, n)
    # scored through the DICOM-series input of naslung score (three nodules: two ok, one outside the scan)
    points = [(72.28670656, 76.90023946, -190.4589276), (23.49083071, -47.63390567, -172.2791417), (0.0, 0.0, 500.0)]
    rows = [
        {"nodule_id": f"d{i + 1}", "seriesuid": series[min(i, 1)], "coordX": x, "coordY": y, "coordZ": z}
        for i, (x, y, z) in enumerate(points)
    ]
    results = _score(tmp_path, scans, rows)
    scored = pd.read_csv(results, dtype=str, keep_default_na=False)
    assert list(scored["status"]) == ["ok", "ok", "error"], list(scored["error"])

    (report,) = write_reports(results, scans, model_name=MODEL)
    assert report.key == study and report.kind == "dicom" and report.folder == reports_dir(results) / study
    assert report.n_rows == 3 and report.n_ok == 2 and report.sr is not None

    ds = pydicom.dcmread(report.sr)
    assert ds.SOPClassUID == COMPREHENSIVE_3D_SR and ds.StudyInstanceUID == study
    assert (ds.PatientID, str(ds.PatientName), ds.StudyDate, ds.AccessionNumber) == (
        "NASL-TEST-001",
        "Test^Patient",
        "20260102",
        "ACC42",
    )
    (evidence,) = ds.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == study
    listed = {s.SeriesInstanceUID: len(s.ReferencedSOPSequence) for s in evidence.ReferencedSeriesSequence}
    assert listed == {uid: image.GetDepth() for uid in series}
    instances = {i.SOPInstanceUID for f in (scans / "series1").iterdir() for i in [pydicom.dcmread(f)]}
    refs = next(s for s in evidence.ReferencedSeriesSequence if s.SeriesInstanceUID == series[0])
    assert {r.ReferencedSOPInstanceUID for r in refs.ReferencedSOPSequence} == instances
    parsed = hd.sr.srread(report.sr)
    assert sorted(parsed.get_evidence_series()) == sorted((study, uid) for uid in series)

    found = [_finding(g) for g in _groups(report.sr)]
    assert [f["id"] for f in found] == ["nodule d1", "nodule d2"]
    for f, (_, r) in zip(found, scored.iloc[:2].iterrows()):
        assert f["p"] == pytest.approx(float(r["probability"]), abs=1e-12)
        assert f["label"] == (codes.SCT.Malignant if r["label"] == "1" else codes.SCT.Benign)
        assert f["for"] == frame and f["algorithm"] == {"Algorithm Name": MODEL, "Algorithm Version": "3"}
    assert np.allclose([f["point"] for f in found], [points[0], points[1]], atol=1e-4)
    # the PDF: the table page (the error row too) and one page with both overlays
    pages = _render(report.pdf)
    assert len(pages) == 2 and _ink(pages[0]) > 0.005 and _colour(pages[1]) > 0.01


def test_results_columns_are_found_under_aliases_and_result_prefixes(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    pd.DataFrame(
        [
            {
                "Series UID": " s1 ",
                "X (mm)": "-12,5",
                "y": "3",
                "Z": "4.5",
                "Nodule ID": "n",
                "status": "received",
                "result_status": "ok",
                "probability": "0.25",
                "label": "0",
            }
        ]
    ).to_csv(path, index=False)
    (row,) = read_results(path)
    assert (row.seriesuid, row.nodule_id, row.status, row.ok) == ("s1", "n", "ok", True)
    assert row.point_xyz_mm == (-12.5, 3.0, 4.5) and row.p_malignant == 0.25 and row.model_version == ""


def test_long_tables_continue_on_more_pages(tmp_path: Path) -> None:
    long_error = "row: scoring failed: " + "a very long reason " * 20
    rows = [
        ReportRow(
            i,
            "s",
            f"n{i}",
            ("1", "2", "3"),
            status="error" if i % 3 else "ok",
            error=long_error if i % 3 else "",
            probability="" if i % 3 else "0.5",
        )
        for i in range(40)
    ]
    lines = sum(ERROR_LINES if i % 3 else 1 for i in range(40))
    pages = table_pages(rows)
    assert len(pages) == math.ceil(lines / TABLE_LINES) and [r for p in pages for r in p] == rows
    pdf = write_pdf(tmp_path / "r.pdf", rows, PdfHeader("t", ("a line",)), tmp_path)
    images = _render(pdf, scale=0.5)
    assert len(images) == len(pages) == page_count(rows) and all(_ink(i) > 0.003 for i in images)


def test_score_report_flag_implies_explain_and_writes_the_reports(
    roi: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``naslung score --report`` end to end, with TorchServe replaced by the in-process scorer."""
    import naslung.score_csv as score_module
    from naslung.cli import main

    seen: dict[str, Any] = {}

    def in_process(params: Any, csv_path: Path, scans_dir: Path, out_path: Path, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return score_csv(
            csv_path,
            scans_dir,
            out_path,
            None,
            PREPARE,
            SERVE,
            progress=False,
            explain=kwargs["explain"],
            explain_predict=_explain,
            predict=lambda p: [_answer(x) for x in p],
        )

    monkeypatch.setattr(score_module, "score_with_server", in_process)
    csv, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame([{"nodule_id": "b1", "seriesuid": UID_B, "coordX": 60.0, "coordY": 72.0, "coordZ": -103.0}]).to_csv(
        csv, index=False
    )
    params = str(Path(__file__).resolve().parents[2] / "params.yaml")
    argv = ["--params", params, "score", str(csv), "--scans", str(roi), "--out", str(out), "--no-progress"]
    assert main([*argv, "--no-log", "--report"]) == 0
    assert seen["explain"] is True
    folder = tmp_path / "out_reports" / UID_B
    assert (folder / "report.dcm").is_file() and (folder / "report.pdf").is_file()
    assert f"report {UID_B}: 1/1 ok" in capsys.readouterr().out
    assert len(_groups(folder / "report.dcm")) == 1 and len(_render(folder / "report.pdf", scale=0.3)) == 2
