"""Data layer: `Case` records from every chest X-ray source, and safe image I/O.

Sources are registered by name: ``nih_cxr14``, ``iu_xray``, ``covid_cxr``, ``mimic_cxr``,
``hf`` and ``csv``; `load_cases(source, split, **options)` reads any of them.
"""

from medxpert.data import covid, csv_source, hf, iu, mimic, nih  # noqa: F401  (register readers)
from medxpert.data.case import (
    SPLITS,
    VIEWS,
    Case,
    cases_from_frame,
    cases_to_frame,
    join_sections,
    normalise_view,
)
from medxpert.data.images import ACCEPTED, DICOM_HEADER_KEY, DicomHeader, dicom_header, open_image
from medxpert.data.locate import find_pack
from medxpert.data.registry import load_cases, reader_options, sources
from medxpert.data.report_sections import findings_and_impression, split_sections
from medxpert.data.study import Study, group_studies, normalise_report, report_groups

__all__ = [
    "ACCEPTED",
    "DICOM_HEADER_KEY",
    "SPLITS",
    "VIEWS",
    "Case",
    "DicomHeader",
    "Study",
    "cases_from_frame",
    "cases_to_frame",
    "dicom_header",
    "find_pack",
    "findings_and_impression",
    "group_studies",
    "join_sections",
    "load_cases",
    "normalise_report",
    "normalise_view",
    "open_image",
    "reader_options",
    "report_groups",
    "sources",
    "split_sections",
]
