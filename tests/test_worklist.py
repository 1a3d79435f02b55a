"""Batch worklists (`medxpert.interop.worklist`, `medxpert diagnose --input`): real images, a
real DICOM study, corrupt and non-image files, a tiny real pipeline; resuming after a run and
after a study killed midway."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medxpert.cli import main
from medxpert.errors import ConfigError, DataFormatError
from medxpert.interop.worklist import OUTPUTS, Study, parse_formats, read_worklist, run_worklist
from tests.builders import dicom_bytes, gradient, png_bytes, tiny_pipeline

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


def dicom_view(uid: str, view: str, low: int) -> bytes:
    """A DX file of study `uid` with ViewPosition `view`."""
    import pydicom

    dataset = pydicom.dcmread(
        io.BytesIO(dicom_bytes(gradient(low=low, high=4000, dtype=np.uint16)))
    )
    dataset.StudyInstanceUID, dataset.ViewPosition = uid, view
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def iu_study(shared_pack) -> tuple[Path, pd.DataFrame]:
    """The IU pack and the rows (frontal, then lateral) of its first test study with both."""
    pack = shared_pack("iu_xray")
    rows = pd.read_csv(pack / "reports.csv", dtype=str, keep_default_na=False)
    rows = rows[(rows["split"] == "test") & (rows["image_available"] == "1")]
    for _, study in rows.groupby("study_id", sort=False):
        if set(study["view"]) >= {"frontal", "lateral"}:
            return pack, study.sort_values("view")
    pytest.skip("no IU test study with both views")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("worklist-pipeline"))


@pytest.fixture
def incoming(tmp_path, shared_pack) -> Path:
    """5 studies (2 PNGs, 2 IU X-rays, a DICOM study of a lateral and a PA file), a corrupt
    PNG, a text file and a hidden file."""
    pack, study = iu_study(shared_pack)
    folder = tmp_path / "incoming"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(png_bytes(gradient()))
    (folder / "sub" / "b.png").write_bytes(png_bytes(gradient(low=40)))
    for relative in study["image_path"]:
        shutil.copy(pack / relative, folder / Path(relative).name)
    (folder / "sub" / "1-lateral.dcm").write_bytes(dicom_view(STUDY_UID, "LL", 100))
    (folder / "sub" / "2-frontal").write_bytes(dicom_view(STUDY_UID, "PA", 0))  # by content
    (folder / "sub" / "corrupt.png").write_bytes(png_bytes(gradient())[:80])
    (folder / "notes.txt").write_text("Patient called at 9.\n")
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def mtimes(folder: Path) -> dict[str, int]:
    """Each file's modification time."""
    files = (path for path in folder.rglob("*") if path.is_file())
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in files}


def test_a_folder_worklist_writes_reports_tables_and_errors_then_resumes(pipeline, incoming):
    out = incoming / "reports"  # inside the input: left out of the worklist
    summary = run_worklist(pipeline, incoming, out, note="Cough.", progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (5, 0, 2)
    assert summary.studies_per_s > 0
    rows = {row["study"]: row for row in read_csv(out / "summary.csv")}
    assert len(rows) == 5 and {"a.png", "sub/b.png", STUDY_UID} <= set(rows)
    dicom = rows[STUDY_UID]
    assert dicom["images"] == "2" and dicom["triage"] and "Edema" in dicom["top_findings"]
    for row in rows.values():
        report = json.loads((out / row["folder"] / "report.json").read_text())
        assert report["query"] == row["study"] and report["worklist"]["note"] == "Cough."
        assert report["report"]["triage"]["level"] == row["triage"]
        markdown = (out / row["folder"] / "report.md").read_text()
        assert markdown.startswith("# MedXpert report:") and "**Triage:" in markdown
    images = json.loads((out / dicom["folder"] / "report.json").read_text())["worklist"]["images"]
    assert [Path(path).name for path in images] == ["2-frontal", "1-lateral.dcm"]  # PA first
    assert rows["sub/b.png"]["folder"] != "sub" and "/" not in rows["sub/b.png"]["folder"]
    errors = {Path(row["path"]).name: row for row in read_csv(out / "errors.csv")}
    assert set(errors) == {"corrupt.png", "notes.txt"}
    assert errors["corrupt.png"]["error"] == "InvalidImageError"
    assert "corrupt" in errors["corrupt.png"]["message"]
    assert "contains text, not image data" in errors["notes.txt"]["message"]

    before = mtimes(out)
    again = run_worklist(pipeline, incoming, out, note="Cough.", progress=False)
    assert (again.done, again.skipped, again.failed) == (0, 5, 2)
    assert mtimes(out) == before  # nothing rewritten, the tables included

    killed = out / rows["a.png"]["folder"]  # killed midway: report.md written, report.json not
    (killed / "report.json").unlink()
    resumed = run_worklist(pipeline, incoming, out, note="Cough.", progress=False)
    assert (resumed.done, resumed.skipped, resumed.failed) == (1, 4, 2)
    after = mtimes(out)
    changed = {name for name in after if after[name] != before.get(name)}
    # summary.csv is rewritten only when a row changes: the redone study's seconds may round alike
    assert changed - {"summary.csv"} == {f"{killed.name}/report.json", f"{killed.name}/report.md"}
    assert len(read_csv(out / "summary.csv")) == 5


def test_a_refused_image_is_an_error_row_unless_forced(pipeline, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "blank.png").write_bytes(png_bytes(np.full((160, 192), 128, np.uint8)))
    (folder / "a.png").write_bytes(png_bytes(gradient()))
    summary = run_worklist(pipeline, folder, tmp_path / "out", progress=False)
    assert (summary.done, summary.failed) == (1, 1)
    (error,) = read_csv(tmp_path / "out" / "errors.csv")
    assert error["study"] == "blank.png" and error["error"] == "InputRefusedError"
    assert "blank" in error["message"]
    forced = run_worklist(pipeline, folder, tmp_path / "out", force=True, progress=False)
    assert (forced.done, forced.skipped, forced.failed) == (1, 1, 0)
    report = json.loads((tmp_path / "out" / "blank.png" / "report.json").read_text())
    assert any("forced" in warning for warning in report["report"]["warnings"])
    assert read_csv(tmp_path / "out" / "errors.csv") == []


def test_a_csv_worklist_groups_rows_by_study_with_notes(pipeline, tmp_path, shared_pack):
    pack, study = iu_study(shared_pack)
    (tmp_path / "lists").mkdir()
    (tmp_path / "a.png").write_bytes(png_bytes(gradient()))
    frontal, lateral = (str(pack / relative) for relative in study["image_path"])
    table = tmp_path / "lists" / "worklist.csv"
    pd.DataFrame(
        [
            {"path": frontal, "note": "Fever and cough.", "study": "iu-1"},
            {"path": lateral, "note": "", "study": "iu-1"},
            {"path": "../a.png", "note": "", "study": ""},  # relative to the CSV's folder
            {"path": "missing.png", "note": "Dyspnoea.", "study": ""},
        ]
    ).to_csv(table, index=False)
    studies = read_worklist(table, note="Routine.")
    assert [(s.name, len(s.paths), s.note) for s in studies] == [
        ("iu-1", 2, "Fever and cough."),
        ("../a.png", 1, "Routine."),
        ("missing.png", 1, "Dyspnoea."),
    ]
    summary = run_worklist(pipeline, table, tmp_path / "out", note="Routine.", progress=False)
    assert (summary.done, summary.failed) == (2, 1)
    rows = {row["study"]: row for row in read_csv(tmp_path / "out" / "summary.csv")}
    assert rows["iu-1"]["images"] == "2" and rows["iu-1"]["folder"] == "iu-1"
    report = json.loads((tmp_path / "out" / "iu-1" / "report.json").read_text())
    assert report["worklist"]["images"] == [frontal, lateral]
    (error,) = read_csv(tmp_path / "out" / "errors.csv")
    assert error["study"] == "missing.png" and "does not exist" in error["message"]
    (tmp_path / "bad.csv").write_text("file,note\na.png,x\n")
    with pytest.raises(DataFormatError, match="no `path` column"):
        read_worklist(tmp_path / "bad.csv")


def test_the_heatmaps_format_writes_pngs_into_the_study_folder(pipeline, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(gradient()))
    summary = run_worklist(pipeline, folder, tmp_path / "out", formats="heatmaps", progress=False)
    assert (summary.done, summary.failed) == (1, 0), read_csv(tmp_path / "out" / "errors.csv")
    maps = sorted((tmp_path / "out" / "a.png" / "heatmaps").glob("*.png"))
    assert maps and all(path.read_bytes().startswith(b"\x89PNG") for path in maps)


def test_formats_and_folder_names():
    assert parse_formats(None) == ("json", "markdown")
    assert parse_formats("fhir, SR") == ("json", "markdown", "sr", "fhir")
    with pytest.raises(ConfigError, match="pdf"):
        parse_formats("json,pdf")
    assert Study("1.2.3", ()).slug == "1.2.3"
    names = ["sub/a.png", "sub_a.png", "sub a.png", "summary.csv", "../x"]
    slugs = [Study(name, ()).slug for name in names]
    assert len(set(slugs)) == len(slugs) and all("/" not in s and s[0] != "." for s in slugs)


def test_the_cli_diagnoses_a_worklist_and_one_query_with_sr_and_fhir(
    tmp_path, shared_pack, make_workspace, monkeypatch, capsys
):
    for name, value in make_workspace(tmp_path / "workspace").items():
        monkeypatch.setenv(name, value)
    folder = tmp_path / "in"
    folder.mkdir()
    images = sorted((shared_pack("iu_xray") / "images").iterdir())[:2]
    for image in images:
        shutil.copy(image, folder / image.name)
    (folder / "empty.png").write_bytes(b"")
    formats = ["sr", "fhir"]
    command = ["diagnose", "--input", str(folder), "--out", str(tmp_path / "out"), "-k", "3"]
    assert main([*command, "--formats", ",".join(["json", *formats])]) == 0
    printed = capsys.readouterr().out
    assert "2 studies diagnosed, 0 skipped (done before), 1 failed" in printed
    assert "errors.csv" in printed
    for image in images:
        assert (tmp_path / "out" / image.name / "report.json").is_file()
        for name in formats:
            assert (tmp_path / "out" / image.name / OUTPUTS[name]).is_file()
    assert main(command) == 0
    assert "0 studies diagnosed, 2 skipped" in capsys.readouterr().out
    assert main([*command, "--image", str(images[0])]) == 2
    assert "go with one query" in capsys.readouterr().err
    assert main(["diagnose", "--image", str(images[0]), "--out", str(tmp_path)]) == 2
    assert "go with --input" in capsys.readouterr().err

    one = ["diagnose", "--image", str(images[0]), "-k", "3", "--json", str(tmp_path / "one.json")]
    one += ["--sr", str(tmp_path / "one.sr.dcm"), "--fhir", str(tmp_path / "one.fhir.json")]
    one += ["--heatmaps", str(tmp_path / "maps")]
    assert main(one) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "one.json").read_text())["query"] == images[0].name
    sr = pydicom.dcmread(tmp_path / "one.sr.dcm")
    assert sr.Modality == "SR" and sr.ContentSequence
    assert list((tmp_path / "maps").glob("*.png"))
    bundle = json.loads((tmp_path / "one.fhir.json").read_text())
    assert bundle["resourceType"] == "Bundle" and bundle["entry"]
