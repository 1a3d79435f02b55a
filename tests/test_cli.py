"""The command line, run in-process and as `python -m medxpert`."""

from __future__ import annotations

import json
import subprocess
import sys

from medxpert import __version__
from medxpert.cli import main


def test_data_summary_prints_and_writes_json(shared_pack, tmp_path, capsys):
    shared_pack("covid_cxr")
    out = tmp_path / "summary.json"
    assert (
        main(["data", "summary", "--source", "covid_cxr", "--split", "test", "--json", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "covid_cxr: 19 cases" in printed and "Pneumonia" in printed
    summary = json.loads(out.read_text())["covid_cxr"]
    assert summary["totals"]["cases"] == 19
    assert summary["by_split"]["test"]["with_image"] == 19
    assert summary["labels"]["Pneumonia"]["test"]["positive"] == 18


def test_data_summary_of_a_csv_source_with_options(tmp_path, capsys):
    (tmp_path / "cases.csv").write_text("case_id,report,split\n1,No acute process.,train\n")
    assert (
        main(["data", "summary", "--source", "csv", "--option", f"csv={tmp_path / 'cases.csv'}"])
        == 0
    )
    assert "csv: 1 cases" in capsys.readouterr().out


def test_user_errors_exit_2_with_a_message(capsys):
    assert main(["data", "summary", "--source", "nope"]) == 2
    assert "unknown data source 'nope'" in capsys.readouterr().err
    assert main(["data", "summary", "--source", "csv", "--option", "novalue"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_label_command(capsys):
    assert main(["label", "Small left pleural effusion. No pneumothorax.", "--json"]) == 0
    labels = json.loads(capsys.readouterr().out)
    assert labels["Pleural Effusion"] == 1 and labels["Pneumothorax"] == 0
    assert labels["Edema"] is None


def test_python_dash_m_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "medxpert", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == f"medxpert {__version__}"
