"""The offline writer's prose report (sentences of retrieved studies, each cited), the
faithfulness check, the sentence bank and the per-finding thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medxpert.errors import ConfigError
from medxpert.labels import CHEXPERT_LABELS, LABEL_INDEX, default_labeler
from medxpert.report import OfflineWriter, ReportContext, StructuredReport
from medxpert.report.faithfulness import enforce
from medxpert.report.schema import Statement
from medxpert.report.sentences import REGIONS, region_of, repair_deidentified, split_sentences
from medxpert.report.thresholds import (
    DEFAULT_THRESHOLD,
    THRESHOLDS_FILE,
    choose_thresholds,
    default_thresholds,
    read_thresholds,
    write_thresholds,
)
from medxpert.retrieval import Hit
from tests.builders import report_hit

EFFUSION = "Heart size is normal. Large left pleural effusion. No pneumothorax."
NORMAL = "The lungs are clear. No pleural effusion. No pneumothorax."
NORMAL_IMPRESSION = "No acute cardiopulmonary abnormality."


def write(hits: list[Hit], **thresholds: float) -> tuple[StructuredReport, ReportContext]:
    context = ReportContext.from_hits(hits, thresholds={**default_thresholds(), **thresholds})
    return OfflineWriter().write(context), context


def read_positives(text: str) -> set[str]:
    vector = default_labeler().label(text)
    return {label for label, v in zip(CHEXPERT_LABELS, vector, strict=True) if v == 1} - {
        "No Finding"
    }


def assert_grounded(report: StructuredReport, context: ReportContext) -> None:
    """Every sentence cites retrieved studies, one of which is positive for each finding it
    affirms, and the evidence states that finding; no de-identification token is shown."""
    retrieved = {hit.case.case_id for hit in context.hits}
    for statement in report.statements:
        assert statement.cited_case_ids, statement
        assert set(statement.cited_case_ids) <= retrieved
        assert "XXXX" not in statement.text.upper()
        for label in read_positives(statement.text):
            assert context.stated(label), (statement.text, label)
            assert set(statement.cited_case_ids) & set(context.vote.evidence[label])
    assert "XXXX" not in report.to_markdown().upper()


def test_a_prose_report_of_sentences_from_the_retrieved_studies_in_report_order():
    hits = [
        report_hit("a", 0.90, EFFUSION, {"Pleural Effusion": 1, "Pneumothorax": 0}),
        report_hit("b", 0.89, EFFUSION, {"Pleural Effusion": 1}),
        report_hit("c", 0.80, NORMAL, {"No Finding": 1, "Pleural Effusion": 0}),
    ]
    report, context = write(hits)
    assert [s.text for s in report.findings] == [
        "Heart size is normal.",  # heart and mediastinum before the pleura
        "Large left pleural effusion.",
        "No pneumothorax.",  # a pertinent negative every study states
    ]
    assert report.findings[1].cited_case_ids == ["a", "b"]
    assert report.impression_text == "Pleural effusion."
    assert "probability" not in report.plain_text() and "No pleural effusion" not in (
        report.plain_text()
    )
    assert_grounded(report, context)
    assert report.writer == "offline" and [c.code for c in report.icd10] == ["J90"]
    assert {c.case_id for c in report.cited_cases} == {"a", "b", "c"}
    assert report.warnings == []
    markdown = report.to_markdown()
    assert "- Large left pleural effusion. [a, b]" in markdown and "### Impression" in markdown


def test_a_finding_that_no_cited_study_supports_is_never_stated():
    hits = [
        report_hit(
            f"n{i}",
            0.9,
            NORMAL,
            {"No Finding": 1},
            impression="No acute cardiopulmonary abnormality.",
        )
        for i in range(3)
    ] + [report_hit("p", 0.8, "Small right pneumothorax.", {"Pneumothorax": 1})]
    report, context = write(hits)
    text = report.plain_text()
    assert "Small right pneumothorax" not in text and not read_positives(text)
    assert report.impression_text == NORMAL_IMPRESSION
    assert_grounded(report, context)
    # the same sentence, supported by most studies, is stated and cites them
    hits = [
        report_hit(f"p{i}", 0.9, "Small right pneumothorax.", {"Pneumothorax": 1}) for i in range(3)
    ]
    report, context = write([*hits, report_hit("n", 0.8, NORMAL, {"No Finding": 1})])
    assert "Small right pneumothorax." in report.findings_text
    assert_grounded(report, context)


def test_minority_support_is_worded_as_a_possibility_never_as_a_fact():
    hits = [
        report_hit("a", 0.9, "Large left pleural effusion.", {"Pleural Effusion": 1}),
        report_hit("b", 0.9, "Possible small left effusion.", {"Pleural Effusion": 1}),
        report_hit("c", 0.9, NORMAL, {"No Finding": 1}),
    ]
    report, context = write(hits, **{"Pleural Effusion": 0.7})  # vote 0.67: possible, not stated
    assert context.possible("Pleural Effusion") and not context.stated("Pleural Effusion")
    text = report.plain_text()
    assert "Possible small left effusion." in text
    assert "Large left pleural effusion" not in text and "No pleural effusion" not in text
    assert not read_positives(text)
    assert_grounded(report, context)
    report, context = write(hits, **{"Pleural Effusion": 0.6})  # now stated as a fact
    assert "Large left pleural effusion." in report.plain_text()


def test_deidentification_tokens_are_rephrased_or_the_sentence_dropped():
    hits = [
        report_hit(
            f"x{i}",
            0.9,
            "The XXXX are normal. The lungs are clear. There are no XXXX of a pleural effusion.",
            {"No Finding": 1},
            impression="Normal chest x-XXXX.",
        )
        for i in range(2)
    ]
    report, context = write(hits)
    assert report.findings_text == (
        "The lungs are clear. There are no signs of a pleural effusion."
    )
    assert report.impression_text == "Normal chest x-ray."
    assert_grounded(report, context)


def test_the_faithfulness_check_removes_what_the_evidence_does_not_support():
    hits = [
        report_hit("a", 0.9, EFFUSION, {"Pleural Effusion": 1}),
        report_hit("b", 0.9, EFFUSION, {"Pleural Effusion": 1}),
        report_hit("c", 0.8, NORMAL, {"No Finding": 1}),
    ]
    report, context = write(hits)
    claims = [
        Statement(text="Large left pleural effusion.", cited_case_ids=["a", "elsewhere"]),
        Statement(text="Large right pneumothorax.", cited_case_ids=["a"]),
        Statement(text="Heart size is normal.", cited_case_ids=[]),
        Statement(text="Moderate pleural effusion.", cited_case_ids=["c"]),
        Statement(text="No pleural effusion.", cited_case_ids=["c"]),
        Statement(text="The XXXX are normal.", cited_case_ids=["a"]),
        Statement(text="Normal chest x-XXXX.", cited_case_ids=["b"]),
    ]
    checked = enforce(report.model_copy(update={"findings": claims}), context)
    assert [(s.text, s.cited_case_ids) for s in checked.findings] == [
        ("Large left pleural effusion.", ["a"]),
        ("Normal chest x-ray.", ["b"]),
    ]
    reasons = "\n".join(checked.warnings)
    assert "not retrieved: ['elsewhere']" in reasons
    assert '"Large right pneumothorax." from the findings: it states pneumothorax' in reasons
    assert '"Heart size is normal." from the findings: it cites no retrieved study' in reasons
    assert "none of the studies it cites is positive for it" in reasons
    assert '"No pleural effusion." from the findings: it denies pleural effusion' in reasons
    assert "de-identification token" in reasons
    assert {c.case_id for c in checked.cited_cases} == {"a", "b"} | {
        c for s in checked.impression for c in s.cited_case_ids
    }


def test_sentences_are_split_numbering_dropped_and_placed_in_report_regions():
    assert split_sentences("1. No acute disease. 2. Stable cardiomegaly.\n3. .") == [
        "No acute disease.",
        "Stable cardiomegaly.",
    ]
    assert repair_deidentified("Pulmonary XXXX are normal.") == "Pulmonary vasculature are normal."
    assert repair_deidentified("XXXX XXXX noted.") is None
    texts = {
        "Right PICC line tip in the SVC.": "lines and tubes",
        "The cardiomediastinal silhouette is normal.": "heart and mediastinum",
        "The lungs are clear.": "lungs",
        "No pneumothorax.": "pleura",
        "Degenerative changes of the thoracic spine.": "bones",
        "Cholecystectomy changes.": "other",
    }
    assert {text: region_of(text) for text in texts} == texts
    assert list(dict.fromkeys(texts.values())) == list(REGIONS)


def test_thresholds_are_chosen_per_finding_for_the_best_validation_f1(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    reference = np.full((n, 14), np.nan)
    votes = rng.uniform(0, 0.15, size=(n, 14))
    effusion, cardio = LABEL_INDEX["Pleural Effusion"], LABEL_INDEX["Cardiomegaly"]
    reference[:40, effusion] = 1  # effusion: the positives' votes lie in [0.3, 0.45)
    votes[:40, effusion] = rng.uniform(0.3, 0.45, 40)
    reference[:3, cardio] = 1  # too few positives: the default stays
    choices = {c.label: c for c in choose_thresholds(votes, reference)}
    assert choices["Pleural Effusion"].threshold == 0.3 and choices["Pleural Effusion"].f1 == 1.0
    assert (
        choices["Pleural Effusion"].default_f1 == 0.0
        and choices["Pleural Effusion"].positives == 40
    )
    assert choices["Cardiomegaly"].threshold == DEFAULT_THRESHOLD
    assert "No Finding" not in choices

    path = write_thresholds(tmp_path, list(choices.values()), "fp-1", chosen_on="test")
    assert path.name == THRESHOLDS_FILE
    assert read_thresholds(tmp_path, "fp-1")["Pleural Effusion"] == 0.3
    assert read_thresholds(tmp_path, "another encoder") == default_thresholds()
    assert read_thresholds(tmp_path / "none", "fp-1") == default_thresholds()
    record = json.loads(path.read_text())
    record["thresholds"]["Pleural Effusion"] = 1.5
    path.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"must lie in \(0, 1\]"):
        read_thresholds(tmp_path, "fp-1")
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        read_thresholds(tmp_path, "fp-1")


def test_sentences_that_name_a_person_or_a_date_are_never_reused():
    findings = "Findings discussed with Dr. Smith on 03/14/2024. The lungs are clear."
    hits = [report_hit(f"s{i}", 0.9, findings, {"No Finding": 1}) for i in range(3)]
    report, context = write(hits)
    assert report.findings_text == "The lungs are clear."
    assert "Smith" not in report.plain_text() and "2024" not in report.plain_text()
    assert_grounded(report, context)


def test_a_threshold_that_states_a_rare_finding_in_normal_studies_is_raised():
    """At 0.25 Lung Lesion has its best F1 of its own (its 10 positives caught, 9 false
    alarms: 0.69 against 0.67 at 0.8); but each false alarm in a normal study also costs that
    study's "No Finding", so the whole-vector choice states the lesion only where its vote is
    high."""
    n = 200
    reference = np.full((n, 14), np.nan)
    votes = np.zeros((n, 14))
    lesion, normal = LABEL_INDEX["Lung Lesion"], LABEL_INDEX["No Finding"]
    reference[:, normal] = 1
    reference[:10, lesion], reference[:10, normal] = 1, 0
    votes[:5, lesion] = 0.8  # five positives the vote is sure of
    votes[5:19, lesion] = 0.25  # five it is not, in the company of 9 normal studies
    low, high = 2 * 10 / (2 * 10 + 9), 2 * 5 / (2 * 5 + 5)
    assert low > high
    choice = next(c for c in choose_thresholds(votes, reference) if c.label == "Lung Lesion")
    assert 0.25 < choice.threshold <= 0.8 and choice.f1 == pytest.approx(high)


def test_sentences_that_compare_with_an_earlier_film_are_not_reused():
    findings = (
        "Stable cardiomegaly. There is improvement in bilateral pulmonary edema. "
        "Unchanged from prior. No new focal consolidation. Stable appearance of the chest."
    )
    hits = [report_hit(f"c{i}", 0.9, findings, {"Cardiomegaly": 1}) for i in range(3)]
    report, context = write(hits)
    assert report.findings_text == "Cardiomegaly."
    assert_grounded(report, context)
