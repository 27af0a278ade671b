"""Per-study reports of a scored nodule CSV (``naslung score ... --report``): a DICOM SR and a PDF.

``rows`` (the results CSV read back), ``studies`` (rows grouped by study, the source series' identity
from DICOM headers or generated for MetaImage input), ``sr`` (TID 1500 measurement report in a
Comprehensive 3D SR, highdicom), ``pdf`` (nodule table and CAM overlays, matplotlib) and ``build``
(the files ``<out stem>_reports/<study>/report.dcm`` and ``report.pdf``). Built after scoring from the
results file and the scans' headers only, so it is independent of the scoring pipeline's internals.
World points are (x, y, z) in mm, LPS patient coordinates (DICOM; LUNA16/SimpleITK MetaImage alike).
"""

from naslung.report.build import StudyReport, describe_reports, reports_dir, write_reports, write_study_report

__all__ = ["StudyReport", "describe_reports", "reports_dir", "write_reports", "write_study_report"]
