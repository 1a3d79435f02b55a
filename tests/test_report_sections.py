"""Report section parsing (MIMIC-CXR free-text reports and CSV report columns)."""

from medxpert.data import findings_and_impression, split_sections
from tests.builders import MIMIC_REPORT, MIMIC_REPORT_NO_SECTIONS


def test_sections_of_a_mimic_report():
    sections = split_sections(MIMIC_REPORT)
    assert list(sections) == ["examination", "indication", "comparison", "findings", "impression"]
    assert sections["indication"] == "___F with cough and fever"
    findings, impression = findings_and_impression(MIMIC_REPORT)
    assert findings == (
        "There is a new right lower lobe consolidation. Small right pleural "
        "effusion. No pneumothorax. Heart size is normal."
    )
    assert impression.startswith("Right lower lobe pneumonia")


def test_report_without_headers_uses_the_last_paragraph():
    assert findings_and_impression(MIMIC_REPORT_NO_SECTIONS) == (
        "",
        "No acute cardiopulmonary process.",
    )


def test_conclusion_counts_as_impression_and_repeated_sections_join():
    text = "FINDINGS: Clear lungs.\nFINDINGS: Normal heart.\nCONCLUSION: Normal study."
    assert findings_and_impression(text) == ("Clear lungs. Normal heart.", "Normal study.")
    assert findings_and_impression("") == ("", "")
