"""`medxpert index build / info`, `medxpert search` (images, studies, texts), `diagnose`, `eval
retrieval --index`, `eval fusion`, and the original MedXpert scripts, on miniature copies of the
shared packs with a tiny saved model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medxpert.cli import main
from medxpert.index import CaseLibrary
from medxpert.index.export import read_embeddings
from medxpert.labels import CHEXPERT_LABELS
from tests.builders import mini_packs, tiny_blip, tiny_encoder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shared_pack):
    """Data, a tiny model at models/medxpert-default and its library at indexes/."""
    root = tmp_path_factory.mktemp("workspace")
    shared = {pack: shared_pack(pack) for pack in ("nih_cxr14", "iu_xray", "covid_cxr")}
    data = mini_packs(root / "data", shared, {"train": 24, "val": 8, "test": 60})
    tiny_encoder(root).save(root / "models" / "medxpert-default")
    return root, data


@pytest.fixture
def env(workspace, monkeypatch):
    root, data = workspace
    variables = {
        "MEDXPERT_DATA_DIR": str(data),
        "MEDXPERT_MODELS_DIR": str(root / "models"),
        "MEDXPERT_INDEXES_DIR": str(root / "indexes"),
        "MEDXPERT_RESULTS_DIR": str(root / "results"),
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return root, variables


@pytest.fixture
def built(env, capsys):
    root, _ = env
    if not (root / "indexes" / "medxpert-default" / "manifest.json").is_file():
        code = main(
            [
                "index",
                "build",
                "--name",
                "medxpert-default",
                "--embeddings",
                str(root / "embeddings"),
            ]
        )
        assert code == 0, capsys.readouterr().err
        capsys.readouterr()
    return root


def test_index_build_writes_the_library_and_raw_embeddings(built, capsys):
    library = CaseLibrary.load(built / "indexes" / "medxpert-default")
    assert {case.split for case in library.cases} == {"train", "val"}
    assert {case.source for case in library.cases} == {"nih_cxr14", "iu_xray", "covid_cxr"}
    images = sum(case.has_image for case in library.cases)
    assert library.count("images") == images > 0 and library.count("reports") > 0
    vectors, ids = read_embeddings(built / "embeddings", "images")
    assert vectors.shape == (images, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, rtol=1e-5)
    stored = library.stored_vectors("images")
    np.testing.assert_array_equal(ids["row"].to_numpy(), stored.rows)
    np.testing.assert_allclose(vectors, stored.vectors, rtol=1e-6)
    assert main(["index", "info"]) == 0
    printed = capsys.readouterr().out
    assert f"{images} images (Flat)" in printed and "medxpert-default" in printed


def test_search_by_text_and_image_writes_table_json_and_plots(built, capsys):
    image = next((built / "data" / "nih_cxr14" / "images").iterdir())
    code = main(
        [
            "search",
            "--text",
            "pleural effusion",
            "--image",
            str(image),
            "--note",
            "cough",
            "-k",
            "4",
            "--target",
            "both",
            "--csv",
            str(built / "out.csv"),
            "--json",
            str(built / "out.json"),
            "--plot",
            str(built / "plots"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "text query: pleural effusion" in printed and "(+ note: cough)" in printed
    table = pd.read_csv(built / "out.csv")
    assert len(table) == 8 and list(table["rank"]) == [1, 2, 3, 4] * 2
    assert set(table["query"]) == {"pleural effusion", image.name}
    assert json.loads((built / "out.json").read_text())[0]["rank"] == 1
    plots = sorted((built / "plots").glob("*.png"))
    assert len(plots) == 2 and all(p.stat().st_size > 10_000 for p in plots)


def test_a_study_query_finds_studies_with_their_images_and_evidence(built, capsys):
    library = CaseLibrary.load(built / "indexes" / "medxpert-default")
    study = next(
        library.study(case.study_id)
        for case in library.cases
        if case.view == "lateral" and len(library.study(case.study_id).images) == 2
    )
    frontal, lateral = (image.image_path for image in study.images)
    out = built / "study"
    code = main(
        [
            "search",
            "--study",
            frontal,
            lateral,
            "--image",
            frontal,
            "-k",
            "5",
            "--target",
            "images",
            "--json",
            str(out.with_suffix(".json")),
            "--csv",
            str(out.with_suffix(".csv")),
            "--plot",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    names = f"{Path(frontal).name} + {Path(lateral).name}"
    assert f"study query: {names}" in printed and f"image query: {Path(frontal).name}" in printed
    assert "matched: " in printed
    records = json.loads(out.with_suffix(".json").read_text())
    studies = [r for r in records if r["query"] == names]
    assert len(studies) == 5 == len({r["study_id"] for r in studies})
    own = next(r for r in studies if r["study_id"] == study.study_id)  # its views: one hit
    assert {e["case_id"] for e in own["evidence"]} == {c.case_id for c in study.images}
    assert [i["view"] for i in own["images"]] == ["frontal", "lateral"]
    table = pd.read_csv(out.with_suffix(".csv"))
    assert {"study_id", "evidence", "images"} <= set(table.columns) and len(table) == 10
    assert len(list(out.glob("*.png"))) == 2


def test_search_errors_are_clear(built, capsys):
    assert main(["search"]) == 2
    assert "nothing to search for" in capsys.readouterr().err
    assert main(["search", "--text", "effusion", "-k", "100000"]) == 2
    assert "larger than the index" in capsys.readouterr().err
    assert main(["search", "--text", "effusion", "--index", "missing"]) == 2
    assert "medxpert index build" in capsys.readouterr().err


def test_eval_with_the_saved_index_gives_the_same_figures(built, capsys):
    def figures(*extra: str) -> dict:
        out = built / "eval"
        assert main(["eval", "retrieval", "--bootstrap", "20", "--out", str(out), *extra]) == 0
        rows = json.loads(out.with_suffix(".json").read_text())["rows"]
        return {(r["task"], r["metric"]): r["fine-tuned"]["value"] for r in rows}

    fresh = figures()
    from_index = figures("--index", "medxpert-default")
    assert "taking" in capsys.readouterr().out
    assert from_index.keys() == fresh.keys()
    assert any("kNN AUC" in task for task, _ in fresh), "the kNN gallery comes from the index"
    for key, value in fresh.items():
        assert from_index[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def run_script(name: str, variables: dict, *arguments: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **variables, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )


def test_the_original_scripts(built, env):
    _, variables = env
    done = run_script("run_search_engine.py", variables, "--text", "cardiomegaly", "-k", "3")
    assert done.returncode == 0, done.stderr
    assert "text query: cardiomegaly" in done.stdout
    done = run_script("inference_to_csv.py", variables, "--sample", "2", "-k", "3")
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(built / "results" / "inference_plots" / "inference_topk.csv")
    assert len(table) == 6 and {"query", "rank", "case_id", "score", "labels", "snippet"} <= set(
        table.columns
    )
    done = run_script("inference_plot.py", variables, "--text", "edema", "-k", "3")
    assert done.returncode == 0, done.stderr
    assert list((built / "results" / "inference_plots").glob("01_edema.png"))


def test_eval_fusion_chooses_on_val_saves_the_choice_and_search_uses_it(built, capsys):
    from medxpert.retrieval import SearchEngine
    from medxpert.retrieval.fusion import FUSION_FILE

    out = built / "fusion_metrics"
    index = built / "indexes" / "medxpert-default"
    try:
        assert main(["eval", "fusion", "--bootstrap", "20", "--out", str(out)]) == 0
        saved = json.loads(out.with_suffix(".json").read_text())
        chosen = saved["fusion"]
        by_method = saved["validation label P@10 by method (chooses)"]
        assert set(by_method) == {"rrf", "calibrated", "rank"}
        assert by_method[chosen] == max(by_method.values())
        row = saved["rows"][-1]
        assert row["task"].startswith("all (") and row["metric"] == "label P@10"
        methods = {"reports only", "images only", "max-cosine", "rrf", "calibrated", "rank"}
        assert methods <= set(row) and all(0 <= row[m]["value"] <= 1 for m in methods)
        assert all(out.with_suffix(suffix).is_file() for suffix in (".csv", ".md", ".png"))
        record = json.loads((index / FUSION_FILE).read_text())
        assert record["method"] == chosen and record["chosen_on"] == "val"
        assert set(record["calibration"]["image"]) == {"image", "report"}
        engine = SearchEngine.from_artifacts(built / "models" / "medxpert-default", index)
        assert engine.fusion.method == chosen
        assert engine.fusion.calibration.covers("image", ["image", "report"])
        assert f"saved the fusion {chosen}" in capsys.readouterr().out
    finally:
        (index / FUSION_FILE).unlink(missing_ok=True)  # the other tests fuse with rrf


def test_diagnose_writes_json_and_markdown_reports(built, env, capsys):
    image = next((built / "data" / "covid_cxr" / "images").iterdir())
    out = built / "reports" / "one.json"
    code = main(
        [
            "diagnose",
            "--image",
            str(image),
            "--note",
            "Fever and cough.",
            "-k",
            "5",
            "--json",
            str(out),
            "--markdown",
        ]
    )
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "**Triage:" in printed and "### Findings" in printed and "Decision support" in printed
    saved = json.loads(out.read_text())
    assert saved["query"] == image.name and len(saved["hits"]) == 5
    assert set(saved["report"]["timings_ms"]) >= {"encode", "search", "caption", "write"}
    assert out.with_suffix(".md").read_text().startswith(f"# MedXpert report: {image.name}")
    _, variables = env
    done = run_script(
        "run_inference_pipeline.py",
        variables,
        "--sample",
        "2",
        "--json",
        str(built / "reports" / "many"),
    )
    assert done.returncode == 0, done.stderr
    assert len(list((built / "reports" / "many").glob("*.json"))) == 2
    assert main(["diagnose"]) == 2 and "nothing to diagnose" in capsys.readouterr().err
    views = [str(path) for path in sorted((built / "data" / "iu_xray" / "images").iterdir())[:2]]
    study = built / "reports" / "study.json"
    code = main(["diagnose", "--image", views[0], "--image", views[1], "--json", str(study)])
    assert code == 0, capsys.readouterr().err
    saved = json.loads(study.read_text())
    assert saved["query"] == " + ".join(Path(view).name for view in views)
    assert all(hit["study_id"] and hit["evidence"] for hit in saved["hits"])


def test_train_captioner_then_diagnose_with_blip(built, tmp_path, capsys):
    base = tiny_blip(tmp_path / "tiny-blip")
    out = tmp_path / "blip-tuned"
    code = main(
        [
            "train-captioner",
            "--base",
            str(base),
            "--out",
            str(out),
            "--source",
            "covid_cxr",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--max-steps",
            "2",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "2 steps" in capsys.readouterr().out and (out / "config.json").is_file()
    image = next((built / "data" / "covid_cxr" / "images").iterdir())
    report = tmp_path / "report.json"
    code = main(
        [
            "diagnose",
            "--image",
            str(image),
            "--captioner",
            "blip",
            "--blip",
            str(out),
            "-k",
            "3",
            "--json",
            str(report),
        ]
    )
    assert code == 0, capsys.readouterr().err
    saved = json.loads(report.read_text())["report"]
    assert saved["caption"] and saved["timings_ms"]["caption"] > 0
    assert (
        main(["train-captioner", "--base", str(base), "--out", str(out), "--source", "nih_cxr14"])
        == 2
    )
    assert "image-report pairs" in capsys.readouterr().err


def test_eval_thresholds_then_reports_score_the_prose_writer_and_three_baselines(built, capsys):
    assert main(["eval", "thresholds", "--out", str(built / "thresholds")]) == 0
    saved = json.loads((built / "indexes" / "medxpert-default" / "thresholds.json").read_text())
    assert set(saved["thresholds"]) == set(CHEXPERT_LABELS) - {"No Finding"}
    assert "| Cardiomegaly |" in (built / "thresholds.md").read_text()
    out = built / "report_metrics"
    assert main(["eval", "reports", "--limit", "6", "--bootstrap", "20", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    tasks = {row["task"] for row in rows}
    assert any(task.startswith("IU test X-ray queries") for task in tasks)
    assert any(task.startswith("IU test reports as TEXT queries") for task in tasks)
    assert any(task.startswith("COVID test X-ray queries") for task in tasks)
    metrics = {row["metric"] for row in rows}
    assert {"BLEU-1", "BLEU-4", "ROUGE-L", "CheXpert F1 micro"} <= metrics
    systems = (
        "random train report",
        "top-1 retrieved report",
        "read-out writer",
        "MedXpert (prose writer)",
    )
    for row in rows:
        assert all(0 <= row[name]["value"] <= 1 for name in systems)
    assert "| ROUGE-L |" in capsys.readouterr().out


def test_eval_context_compares_image_only_with_image_and_note(built, capsys):
    out = built / "context_metrics"
    assert main(["eval", "context", "-k", "5", "--bootstrap", "20", "--out", str(out)]) == 0
    saved = json.loads(out.with_suffix(".json").read_text())
    precision = next(row for row in saved["rows"] if row["metric"] == "label P@k")
    assert precision["image only"]["n"] == precision["image + note"]["n"] > 5
    assert "Clinical context A/B" in capsys.readouterr().out


def test_eval_blend_chooses_on_val_saves_the_weight_and_diagnose_uses_it(
    built, capsys, monkeypatch
):
    import medxpert.eval.blend
    from medxpert.pipeline import DiagnosisPipeline

    out = built / "blend_metrics"
    assert main(["eval", "blend", "--bootstrap", "20", "--out", str(out)]) == 2
    assert "enough positives and negatives" in capsys.readouterr().err  # 8 val X-rays a pack
    monkeypatch.setattr(medxpert.eval.blend, "MIN_AUC_POSITIVES", 1)
    index = built / "indexes" / "medxpert-default"
    try:
        assert main(["eval", "blend", "-k", "5", "--bootstrap", "20", "--out", str(out)]) == 0
        saved = json.loads(out.with_suffix(".json").read_text())
        weight = saved["zero_shot_weight"]
        brier = saved["validation Brier score by weight (chooses)"]
        assert brier[str(weight)] == min(brier.values())
        systems = {
            key for key in saved["rows"][0] if key.startswith(("vote", "zero-shot", "blend"))
        }
        assert systems >= {"vote (w=0)", "zero-shot (w=1)", f"blend (w={weight:g})"}
        assert out.with_name("blend_metrics_weight.png").stat().st_size > 0
        chosen = json.loads((index / "blend.json").read_text())
        assert chosen["zero_shot_weight"] == weight and chosen["chosen_on"] == "val"
        pipeline = DiagnosisPipeline.from_artifacts(built / "models" / "medxpert-default", index)
        assert pipeline.zero_shot_weight == weight
        assert f"saved the weight {weight:g}" in capsys.readouterr().out
    finally:
        (index / "blend.json").unlink(missing_ok=True)  # the other tests use the vote alone
