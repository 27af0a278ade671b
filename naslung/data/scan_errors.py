"""The error of an unreadable scan, shared by the scan readers (:mod:`naslung.data.scans`,
:mod:`naslung.data.dicom`), and the one line of an ITK error message worth showing."""

from __future__ import annotations

from naslung.errors import UserError


class ScanError(UserError, RuntimeError):
    """A scan cannot be read; the message names the file and what is wrong with it."""


def first_error_line(e: BaseException) -> str:
    """The useful line of an ITK / SimpleITK error message (its ``Description:``, else the last line),
    at most 300 characters."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # ITK messages put the useful description on the 'Description:' line
    desc = [ln for ln in lines if ln.startswith("Description:")]
    return (desc[0] if desc else (lines[-1] if lines else type(e).__name__))[:300]
