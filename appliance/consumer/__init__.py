"""The consumer role: a professional's view of a patient's imaging exams in the DMP.

    from appliance.consumer import list_exams, ListingStatus, AccessRefused
    listing = await list_exams(dmp, patient, actor, modality="CT", db=db)

:mod:`.exams` lists (TD0.2, ITI-18, ITI-43, KOS parsing); :mod:`.peers` decides whether a
RetrieveURL from a KOS may be fetched.
"""

from .exams import (
    REPORT_TYPE,
    AccessRefused,
    Exam,
    ExamList,
    ExamProblem,
    Institution,
    ListingStatus,
    RefusalReason,
    ReportEntry,
    SeriesLink,
    list_exams,
)
from .peers import RetrieveTarget, RetrieveUrlError, UrlPolicy, check_retrieve_url

__all__ = [
    "REPORT_TYPE", "AccessRefused", "Exam", "ExamList", "ExamProblem", "Institution",
    "ListingStatus", "RefusalReason", "ReportEntry", "RetrieveTarget", "RetrieveUrlError",
    "SeriesLink", "UrlPolicy", "check_retrieve_url", "list_exams",
]
