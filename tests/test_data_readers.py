"""Every registered reader, on the shared packs and on fixtures in the published layouts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from medxpert.config import Settings
from medxpert.data import (
    Case,
    cases_from_frame,
    cases_to_frame,
    load_cases,
    open_image,
    sources,
)
from medxpert.errors import ConfigError, DataFormatError, DataNotFoundError
from medxpert.labels import LABEL_INDEX
from tests.builders import MIMIC_REPORT, gradient, hf_rows, make_mimic_tree, png_bytes


def test_every_reader_is_registered():
    assert {spec.name for spec in sources()} == {
        "nih_cxr14",
        "iu_xray",
        "iu_xray_r2gen",
        "covid_cxr",
        "mimic_cxr",
        "hf",
        "csv",
    }


# --- the shared packs, checked against the counts their builders wrote --------------------
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_nih_pack(shared_pack, split):
    root = shared_pack("nih_cxr14")
    expected = json.loads((root / "pack_summary.json").read_text())["shared"]["splits"][split]
    cases = load_cases("nih_cxr14", split)
    assert len(cases) == expected["images"]
    assert len({c.patient_id for c in cases}) == expected["patients"]
    assert all(c.has_image and not c.has_text and c.view == "frontal" for c in cases)
    effusion = sum(c.labels[LABEL_INDEX["Pleural Effusion"]] == 1 for c in cases)
    assert effusion == expected["labels"]["Effusion"]
    assert sum("Hernia" in c.extra_labels for c in cases) == expected["labels"]["Hernia"]
    assert open_image(cases[0].image_path).size == (256, 256)


def test_nih_patients_do_not_cross_splits(shared_pack):
    shared_pack("nih_cxr14")
    patients = {
        split: {c.patient_id for c in load_cases("nih_cxr14", split)}
        for split in ("train", "val", "test")
    }
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_iu_pack_pairs_every_image_with_its_study_report(shared_pack, split):
    root = shared_pack("iu_xray")
    expected = json.loads((root / "pack_summary.json").read_text())["splits"][split]
    cases = load_cases("iu_xray", split)
    assert len(cases) == expected["images"]
    assert len({c.study_id for c in cases}) == expected["studies"]
    assert sum(c.view == "frontal" for c in cases) == expected["frontal_images"]
    assert sum(c.view == "lateral" for c in cases) == expected["lateral_images"]
    assert all(c.has_image and c.has_text for c in cases)
    assert all("FINDINGS:" in c.report or "IMPRESSION:" in c.report for c in cases)
    # the views of one study share its one report
    reports: dict[str, set[str]] = {}
    for case in cases:
        reports.setdefault(case.study_id, set()).add(case.text())
    assert all(len(texts) == 1 for texts in reports.values())
    assert open_image(cases[0].image_path).size == (256, 256)


def test_the_r2gen_split_reads_the_studies_r2gen_assigns(shared_pack):
    table = pd.read_csv(shared_pack("iu_xray") / "reports.csv", dtype=str, keep_default_na=False)
    for split in ("train", "val", "test"):
        expected = set(table.loc[table["r2gen_split"] == split, "study_id"])
        cases = load_cases("iu_xray_r2gen", split)
        assert {c.study_id for c in cases} == {f"iu_xray:{s}" for s in expected}
        assert {c.split for c in cases} == {split} and {c.source for c in cases} == {
            "iu_xray_r2gen"
        }
    # the studies R2Gen left out are not read
    everything = {c.study_id for c in load_cases("iu_xray_r2gen")}
    assert len(everything) == table.loc[table["r2gen_split"] != "", "study_id"].nunique()


def test_iu_reader_uses_images_once_they_are_added(shared_pack, tmp_path):
    """The pack's builder fills images/ and image_available; the reader must pick them up."""
    frame = pd.read_csv(shared_pack("iu_xray") / "reports.csv", dtype=str, keep_default_na=False)
    frame = frame[frame["split"] == "test"].head(6).copy()
    (tmp_path / "images").mkdir()
    for index, row in frame.iterrows():
        frame.loc[index, "image_path"] = f"images/{row['image_id']}.png"
        frame.loc[index, "image_available"] = "1"
        (tmp_path / frame.loc[index, "image_path"]).write_bytes(png_bytes(gradient()))
    frame.iloc[-1, frame.columns.get_loc("image_path")] = "images/never-written.png"
    frame.to_csv(tmp_path / "reports.csv", index=False)
    cases = load_cases("iu_xray", "test", root=tmp_path)
    assert len(cases) == 6
    assert sum(c.has_image for c in cases) == 5, "a listed-but-missing image is not invented"
    assert all(c.has_text for c in cases)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_covid_pack(shared_pack, split):
    root = shared_pack("covid_cxr")
    expected = json.loads((root / "pack_summary.json").read_text())["splits"][split]
    cases = load_cases("covid_cxr", split)
    assert len(cases) == expected["images"]
    assert len({c.patient_id for c in cases}) == expected["patients"]
    assert sum(c.view == "lateral" for c in cases) == expected["lateral_images"]
    assert all(c.has_image and c.has_text and c.licence for c in cases)
    assert all(c.meta["source_url"].startswith("http") for c in cases), "attribution kept"


def test_missing_pack_names_all_three_places(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDXPERT_DATA_DIR", str(tmp_path))
    with pytest.raises(DataNotFoundError) as caught:
        load_cases("mimic_cxr", "train")
    message = str(caught.value)
    assert str(tmp_path / "mimic_cxr") in message
    assert "data/mimic_cxr" in message and "shared/data/mimic_cxr" in message
    assert "Getting the data" in message


def test_data_dir_override_is_searched_first(shared_pack, tmp_path, monkeypatch):
    source = shared_pack("covid_cxr")
    copy = tmp_path / "covid_cxr"
    copy.mkdir()
    frame = pd.read_csv(source / "reports.csv", dtype=str, keep_default_na=False).head(3)
    frame.assign(split="test").to_csv(copy / "reports.csv", index=False)
    shutil.copytree(source / "images", copy / "images")
    monkeypatch.setenv("MEDXPERT_DATA_DIR", str(tmp_path))
    assert len(load_cases("covid_cxr", "test")) == 3


def test_unknown_source_split_and_option():
    with pytest.raises(ConfigError, match="unknown data source"):
        load_cases("chexpert", "train")
    with pytest.raises(ConfigError, match="unknown split"):
        load_cases("nih_cxr14", "holdout")
    with pytest.raises(ConfigError, match="accepts: labeler, reports_root"):
        load_cases("mimic_cxr", "train", root=".", views="PA")


# --- MIMIC-CXR-JPG ------------------------------------------------------------------------
@pytest.mark.parametrize("reports_zip", [False, True], ids=["txt-files", "reports-zip"])
def test_mimic_reader_on_the_physionet_layout(tmp_path, reports_zip):
    make_mimic_tree(tmp_path, reports_zip=reports_zip)
    train = load_cases("mimic_cxr", "train", root=tmp_path)
    assert [c.case_id for c in train] == ["mimic_cxr:d1", "mimic_cxr:d2", "mimic_cxr:d3"]
    first = train[0]
    assert first.patient_id == "mimic_cxr:10000032" and first.study_id == "mimic_cxr:50414267"
    assert [c.view for c in train] == ["frontal", "lateral", "frontal"]
    assert first.findings.startswith("There is a new right lower lobe consolidation.")
    assert first.impression == "Right lower lobe pneumonia with small parapneumonic effusion."
    assert first.report == MIMIC_REPORT.strip()
    assert first.labels[LABEL_INDEX["Pneumonia"]] == -1
    assert first.labels[LABEL_INDEX["Pneumothorax"]] == 0
    assert np.isnan(first.labels[LABEL_INDEX["Edema"]])
    # a report without FINDINGS/IMPRESSION headers: the last paragraph is the impression
    assert train[2].findings == "" and train[2].impression == "No acute cardiopulmonary process."
    assert train[2].labels[LABEL_INDEX["No Finding"]] == 1
    assert open_image(first.image_path).size == (192, 160)


def test_mimic_splits_and_missing_images(tmp_path, caplog):
    make_mimic_tree(tmp_path, compress=False)
    assert [c.case_id for c in load_cases("mimic_cxr", "val", root=tmp_path)] == ["mimic_cxr:d4"]
    test = load_cases("mimic_cxr", "test", root=tmp_path)
    assert [c.case_id for c in test] == ["mimic_cxr:d5"]
    assert "missing" in caplog.text


def test_mimic_without_its_csvs(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"metadata\.csv"):
        load_cases("mimic_cxr", "train", root=tmp_path)


# --- Hugging Face datasets ------------------------------------------------------------------
def _hf_dataset(splits=("train", "validation", "test")):
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "findings": datasets.Value("string"),
            "impression": datasets.Value("string"),
        }
    )
    return datasets.DatasetDict(
        {name: datasets.Dataset.from_dict(hf_rows(4), features=features) for name in splits}
    )


def test_hf_reader_from_a_save_to_disk_folder(tmp_path, settings):
    _hf_dataset().save_to_disk(str(tmp_path / "hfset"))
    val = load_cases("hf", "val", dataset=str(tmp_path / "hfset"), settings=settings)
    assert len(val) == 4 and {c.split for c in val} == {"val"}
    case = val[1]
    assert case.impression == "Cardiomegaly." and case.findings.startswith("Finding text 1.")
    assert (
        case.report == "FINDINGS: Finding text 1. No pleural effusion.\nIMPRESSION: Cardiomegaly."
    )
    image = open_image(case.image_path)
    assert image.size == (192, 160)
    assert str(settings.cache_dir) in case.image_path
    again = load_cases("hf", "val", dataset=str(tmp_path / "hfset"), settings=settings)
    assert [c.image_path for c in again] == [c.image_path for c in val], "images cached once"


def test_hf_reader_from_parquet_with_one_split(tmp_path, settings):
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "findings": datasets.Value("string"),
            "impression": datasets.Value("string"),
        }
    )
    table = datasets.Dataset.from_dict(hf_rows(60), features=features)
    table.to_parquet(str(tmp_path / "mimic.parquet"))
    every = load_cases("hf", "all", dataset=str(tmp_path / "mimic.parquet"), settings=settings)
    assert len(every) == 60
    counts = {split: sum(c.split == split for c in every) for split in ("train", "val", "test")}
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0
    again = load_cases("hf", "test", dataset=str(tmp_path / "mimic.parquet"), settings=settings)
    assert [c.case_id for c in again] == [c.case_id for c in every if c.split == "test"]


def test_hf_reader_errors(tmp_path, settings):
    _hf_dataset(("train",)).save_to_disk(str(tmp_path / "hfset"))
    with pytest.raises(DataFormatError, match="no column 'report_text'"):
        load_cases(
            "hf",
            "train",
            dataset=str(tmp_path / "hfset"),
            findings_column="report_text",
            settings=settings,
        )
    with pytest.raises(DataNotFoundError, match="Offline, pass a local"):
        load_cases("hf", "train", dataset="someone/not-a-local-dataset", settings=settings)
    with pytest.raises(ConfigError, match="needs dataset="):
        load_cases("hf", "train", settings=settings)


# --- CSV + image folder ---------------------------------------------------------------------
def test_csv_reader_with_named_columns(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("a", "b"):
        (images / f"{name}.png").write_bytes(png_bytes(gradient()))
    pd.DataFrame(
        {
            "uid": ["a", "b", "c"],
            "file": ["a.png", "b.png", ""],
            "text": [
                "FINDINGS: Small left effusion.\nIMPRESSION: Effusion.",
                "",
                "No acute process.",
            ],
            "fold": ["train", "validation", "test"],
            "Pleural Effusion": ["1", "", "0"],
        }
    ).to_csv(tmp_path / "cases.csv", index=False)
    options = dict(
        csv=str(tmp_path / "cases.csv"),
        image_root=str(images),
        name="clinic",
        id_column="uid",
        image_column="file",
        report_column="text",
        split_column="fold",
    )
    train = load_cases("csv", "train", **options)
    assert len(train) == 1 and train[0].case_id == "clinic:a"
    assert train[0].findings == "Small left effusion." and train[0].impression == "Effusion."
    assert train[0].labels[LABEL_INDEX["Pleural Effusion"]] == 1
    assert load_cases("csv", "val", **options)[0].has_image
    test = load_cases("csv", "test", **options)
    assert not test[0].has_image and test[0].labels[LABEL_INDEX["Pleural Effusion"]] == 0


def test_csv_reader_errors(tmp_path):
    pd.DataFrame({"x": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataFormatError, match="neither an image column nor a report"):
        load_cases("csv", "all", csv=str(tmp_path / "bad.csv"))
    with pytest.raises(DataFormatError, match="lacks column"):
        load_cases("csv", "all", csv=str(tmp_path / "bad.csv"), image_column="path")
    with pytest.raises(ConfigError, match="no option"):
        load_cases("csv", "all", csv=str(tmp_path / "bad.csv"), colour_column="x")
    with pytest.raises(DataNotFoundError):
        load_cases("csv", "all", csv=str(tmp_path / "absent.csv"))


# --- the case record -------------------------------------------------------------------------
def test_case_table_round_trip(tmp_path):
    cases = [
        Case(
            case_id="x:1",
            source="x",
            split="train",
            view="frontal",
            image_path="/a.png",
            findings="f",
            impression="i",
            report="r",
            labels=np.array([1, 0, -1] + [np.nan] * 11),
            extra_labels=("Hernia",),
            label_source="test",
            meta={"age": "40"},
        ),
        Case(case_id="x:2", source="x", split="test"),
    ]
    frame = cases_to_frame(cases)
    frame.to_parquet(tmp_path / "cases.parquet")
    back = cases_from_frame(pd.read_parquet(tmp_path / "cases.parquet"))
    assert [c.case_id for c in back] == ["x:1", "x:2"]
    np.testing.assert_array_equal(back[0].labels, cases[0].labels)
    assert back[0].extra_labels == ("Hernia",) and back[0].meta == {"age": "40"}
    assert back[0].text() == "i f" and back[1].text() == ""


def test_case_validates_its_fields():
    with pytest.raises(ValueError, match="split"):
        Case(case_id="x", source="x", split="holdout")
    with pytest.raises(ValueError, match="14 values"):
        Case(case_id="x", source="x", split="train", labels=np.zeros(3))


def test_settings_env_overrides(tmp_path):
    settings = Settings.from_env(
        {"MEDXPERT_DATA_DIR": str(tmp_path), "MEDXPERT_TOP_K": "25", "MEDXPERT_DEVICE": "cpu"}
    )
    assert settings.top_k == 25 and settings.device == "cpu"
    assert settings.data_dir_candidates()[0] == tmp_path
    with pytest.raises(ConfigError, match="not an integer"):
        Settings.from_env({"MEDXPERT_TOP_K": "many"})
    with pytest.raises(ConfigError, match="choose one of"):
        Settings.from_env({"MEDXPERT_WRITER": "gpt"})
