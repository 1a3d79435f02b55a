"""`medxpert train` and `medxpert eval retrieval` end to end, with the real default towers on
miniature copies of the shared packs."""

from __future__ import annotations

import json

import pytest

from medxpert.cli import main
from medxpert.data import load_cases
from medxpert.encoders import DualEncoder
from tests.builders import mini_packs


@pytest.fixture(scope="module")
def mini_data(tmp_path_factory, shared_pack):
    shared = {pack: shared_pack(pack) for pack in ("nih_cxr14", "iu_xray", "covid_cxr")}
    return mini_packs(tmp_path_factory.mktemp("data"), shared, {"train": 48, "val": 24, "test": 60})


def test_train_then_evaluate(mini_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDXPERT_DATA_DIR", str(mini_data))
    monkeypatch.setenv("MEDXPERT_RESULTS_DIR", str(tmp_path / "results"))
    model_dir = tmp_path / "models" / "mini"
    assert (
        main(
            [
                "train",
                "--out",
                str(model_dir),
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--max-steps-per-epoch",
                "3",
            ]
        )
        == 0
    )
    assert "best epoch 1" in capsys.readouterr().out
    encoder = DualEncoder.load(model_dir)
    assert encoder.backbone == "medxpert-default"
    assert encoder.info["training"]["config"]["batch_size"] == 8
    log = [json.loads(line) for line in (tmp_path / "results" / "train_log.jsonl").open()]
    assert {"step", "epoch"} <= {record["event"] for record in log}
    assert (tmp_path / "results" / "train_curves.png").stat().st_size > 5000

    assert main(["eval", "retrieval", "--model", str(model_dir), "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    assert "IU X-ray studies image→report (pool" in printed and "kNN AUC" in printed
    results = json.loads((tmp_path / "results" / "retrieval_metrics.json").read_text())
    assert results["split"] == "test" and results["baseline"] == "medxpert-default"
    iu_test_studies = len({c.study_id for c in load_cases("iu_xray", "test")})
    tasks = {row["task"] for row in results["rows"]}
    assert {
        f"IU X-ray studies image→report (pool {iu_test_studies})",
        f"IU X-ray studies report→image (pool {iu_test_studies})",
    } <= tasks, "one query per study, not per image"
    assert any(t.startswith("embedding space: test images") for t in tasks)
    assert any(t.startswith("NIH kNN AUC") for t in tasks)
    for suffix in ("csv", "md", "png"):
        assert (tmp_path / "results" / f"retrieval_metrics.{suffix}").is_file()


def test_train_reports_a_missing_model_for_eval(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDXPERT_RESULTS_DIR", str(tmp_path))
    assert main(["eval", "retrieval", "--model", str(tmp_path / "models" / "none")]) == 2
    assert "medxpert train" in capsys.readouterr().err
