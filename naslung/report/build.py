"""Reports of a scored results CSV: per study, a DICOM SR and a PDF (``naslung score ... --report``).

Layout: ``<out stem>_reports/<study>/report.dcm`` and ``report.pdf`` beside the results CSV ``<out>``,
where ``<study>`` is the StudyInstanceUID for DICOM input (rows whose series share it), the series uid
for MetaImage input (one series = one study; see :mod:`naslung.report.studies`), reduced to
``[A-Za-z0-9._-]``. Every row of the results CSV appears in exactly one PDF table -- error rows with their
error; ``report.dcm`` is written for a study with at least one ok row whose scan is found (one finding
per ok row, :mod:`naslung.report.sr`), and the PDF says when and why it was not. Files of an earlier run
in the same folders are replaced; folders of studies no longer in the results are left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from naslung.report.pdf import PdfHeader, write_pdf
from naslung.report.rows import ReportRow, read_results
from naslung.report.sr import build_sr, write_sr
from naslung.report.studies import SeriesLookup, Study, group_studies

DEFAULT_MODEL_NAME = "naslung"
SR_NAME, PDF_NAME = "report.dcm", "report.pdf"


@dataclass(frozen=True)
class StudyReport:
    """The report files of one study."""

    key: str
    """StudyInstanceUID (DICOM input) or series uid."""
    kind: str
    """"dicom", "file" (MetaImage / NIfTI) or "missing" (no scan found)."""
    folder: Path
    pdf: Path
    sr: Path | None
    """None when no SR was written (see ``sr_note``)."""
    sr_note: str
    n_rows: int
    n_ok: int


def reports_dir(results_csv: Path) -> Path:
    """``<results stem>_reports`` beside the results CSV."""
    results_csv = Path(results_csv)
    return results_csv.parent / f"{results_csv.stem}_reports"


def _header(study: Study, results_csv: Path, model_name: str, sr_note: str) -> PdfHeader:
    rows = study.rows
    n_ok = sum(1 for r in rows if r.ok)
    known = study.known_series
    if study.kind == "dicom":
        source = f"DICOM study {study.key}; series " + ", ".join(s.series_instance_uid for s in known)
        p = known[0].patient
        patient = f"patient ID {p.get('PatientID') or '—'}, name {p.get('PatientName') or '—'}"
        patient += f", study date {p.get('StudyDate') or '—'}, accession {p.get('AccessionNumber') or '—'}"
    elif study.kind == "file":
        s = known[0]
        source = f"scan file series {s.seriesuid} (MetaImage / NIfTI, no DICOM headers: Study Instance UID "
        source += f"{s.study_instance_uid} generated from the series uid)"
        patient = "patient unknown (no DICOM headers)"
    else:
        source = f"series {study.key or '(none)'}: no scan found ({study.series[0].problem})"
        patient = "patient unknown"
    versions = sorted({r.model_version for r in rows if r.model_version})
    names = ", ".join(sorted({r.model_name for r in rows if r.model_name})) or model_name
    return PdfHeader(
        title=f"NASLung nodule report — {study.folder_name}",
        lines=(
            source,
            patient,
            f"model {names}, version {', '.join(versions) or '—'}; P(malignant) calibrated, raw P = members' "
            "mean, spread = members' SD; world points (x, y, z) mm, LPS patient coordinates",
            f"rows {len(rows)} (ok {n_ok}, error {len(rows) - n_ok}); DICOM SR: {sr_note}",
            f"results {results_csv.name}; generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; preliminary, "
            "not verified by a person",
        ),
    )


def write_study_report(
    study: Study, folder: Path, results_csv: Path, model_name: str = DEFAULT_MODEL_NAME
) -> StudyReport:
    """Write ``report.dcm`` (when there is something to report) and ``report.pdf`` of one study into ``folder``."""
    sr_path: Path | None = None
    try:
        sr_path = write_sr(folder / SR_NAME, build_sr(study, model_name))
        sr_note = SR_NAME
    except Exception as exc:  # the PDF must not be lost to an SR problem: say why instead
        sr_note = f"not written ({exc})"
    pdf = write_pdf(
        folder / PDF_NAME, study.rows, _header(study, results_csv, model_name, sr_note), Path(results_csv).parent
    )
    return StudyReport(
        study.key, study.kind, folder, pdf, sr_path, sr_note, len(study.rows), sum(1 for r in study.rows if r.ok)
    )


def write_reports(
    results_csv: Path,
    scans_dir: Path,
    out_dir: Path | None = None,
    model_name: str = DEFAULT_MODEL_NAME,
    rows: Sequence[ReportRow] | None = None,
) -> list[StudyReport]:
    """Reports of every study in ``results_csv`` (the rows read from it unless given) into ``out_dir``
    (default :func:`reports_dir`), series looked up below ``scans_dir``; one :class:`StudyReport` per
    study, in order of first appearance."""
    results_csv = Path(results_csv)
    out = Path(out_dir) if out_dir is not None else reports_dir(results_csv)
    table = list(rows) if rows is not None else read_results(results_csv)
    studies = group_studies(table, SeriesLookup(Path(scans_dir)))
    return [write_study_report(s, out / s.folder_name, results_csv, model_name) for s in studies]


def describe_reports(reports: Sequence[StudyReport]) -> str:
    """One line per study report (for the CLI)."""
    lines = []
    for r in reports:
        sr = str(r.sr) if r.sr is not None else f"no SR: {r.sr_note}"
        lines.append(f"report {r.key or '(no series)'}: {r.n_ok}/{r.n_rows} ok -> {r.pdf}; {sr}")
    return "\n".join(lines)
