"""`medxpert dicom-node` end to end: a real pipeline behind the node, DCMTK's echoscu and storescu
sending DX images made from real IU X-ray films, the SR checked by dciodvfy, dsrdump and pydicom,
and sent on to a real DCMTK storescp."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from medxpert.cli import main
from medxpert.interop.node import Destination, DicomNode
from tests.builders import dicom_bytes, free_port, tiny_pipeline

CALLING_AE = "MODALITY"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def wait_for(condition: Callable[[], object], timeout: float = 30, what: str = "it") -> object:
    """`condition()`'s first true value; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.1)
    return value


def journal(node: DicomNode, study_uid: str) -> dict:
    path = node.journal_path(study_uid)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def wait_for_state(node: DicomNode, study_uid: str, state: str, **fields: object) -> dict:
    """The study's journal once it is in `state` with `fields`."""

    def reached() -> dict:
        record = journal(node, study_uid)
        matches = record.get("state") == state
        return record if matches and all(record.get(k) == v for k, v in fields.items()) else {}

    return wait_for(reached, what=f"study {study_uid} to be {state} {fields}")


def dx_file(path: Path, film: Path, study_uid: str, view: str, *, jpeg: bool) -> Path:
    """A DX instance of a real film: JPEG baseline (the film re-encoded as grey) or uncompressed."""
    gray = Image.open(film).convert("L")
    if jpeg:
        buffer = io.BytesIO()
        gray.save(buffer, format="JPEG", quality=95)
        encoded = [buffer.getvalue()]
        raw = dicom_bytes(np.asarray(gray), transfer_syntax=JPEGBaseline8Bit, encapsulated=encoded)
    else:
        raw = dicom_bytes(np.asarray(gray))
    dataset = pydicom.dcmread(io.BytesIO(raw))
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, generate_uid()
    dataset.ViewPosition, dataset.BodyPartExamined = view, "CHEST"
    dataset.PatientName, dataset.PatientSex, dataset.PatientBirthDate = "Test^Node", "F", ""
    dataset.StudyDate, dataset.StudyTime, dataset.AccessionNumber = "20240102", "101500", "A1"
    dataset.ReferringPhysicianName, dataset.StudyID = "", "1"
    dataset.SeriesNumber, dataset.InstanceNumber = 1, 1
    dataset.save_as(path, enforce_file_format=True)
    return path


def store(dicom_tool, node: DicomNode, *files: Path, calling_ae: str = CALLING_AE):
    """storescu (proposing JPEG baseline besides the uncompressed syntaxes) to the node."""
    host, port = node.address
    command = [dicom_tool("storescu"), "-xy", "-aet", calling_ae, "-aec", node.ae_title]
    return subprocess.run(
        [*command, host, str(port), *map(str, files)], capture_output=True, text=True, timeout=30
    )


def echo(dicom_tool, node: DicomNode, calling_ae: str = CALLING_AE):
    host, port = node.address
    command = [dicom_tool("echoscu"), "-aet", calling_ae, "-aec", node.ae_title, host, str(port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def films(shared_pack) -> list[tuple[Path, Path]]:
    """(frontal, lateral) films of real IU X-ray studies."""
    pack = shared_pack("iu_xray")
    views: dict[str, dict[str, Path]] = {}
    with (pack / "reports.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            views.setdefault(row["study_id"], {})[row["view"]] = pack / row["image_path"]
    pairs = [
        (v["frontal"], v["lateral"]) for v in views.values() if {"frontal", "lateral"} <= set(v)
    ]
    return pairs[:3]


@pytest.fixture(scope="module")
def storescp(dicom_tool, tmp_path_factory):
    """A DCMTK storescp ("PACS") on a free port: (its Destination, the folder it writes)."""
    folder = tmp_path_factory.mktemp("pacs")
    port = free_port()
    command = [dicom_tool("storescp"), "-aet", "PACS", "-od", str(folder), str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    command = [dicom_tool("echoscu"), "-aec", "PACS", "127.0.0.1", str(port)]
    wait_for(lambda: subprocess.run(command, capture_output=True).returncode == 0, what="storescp")
    yield Destination("127.0.0.1", port, "PACS"), folder
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="module")
def node(pipeline, tmp_path_factory, storescp):
    """The node: a tiny real pipeline, a free port, MODALITY allowed, 1 s quiet, SRs to PACS."""
    out = tmp_path_factory.mktemp("node")
    options = {"allowed_calling_aes": [CALLING_AE], "quiet_seconds": 1.0}
    with DicomNode(pipeline, out, port=0, destination=storescp[0], **options) as running:
        yield running


@pytest.fixture(scope="module")
def study(node, films, dicom_tool, tmp_path_factory) -> dict:
    """A two-image study (lateral sent first) diagnosed by the node: its UIDs and journal."""
    folder = tmp_path_factory.mktemp("study")
    study_uid = generate_uid()
    frontal, lateral = films[0]
    lateral_file = dx_file(folder / "lateral.dcm", lateral, study_uid, "LL", jpeg=False)
    frontal_file = dx_file(folder / "frontal.dcm", frontal, study_uid, "PA", jpeg=True)
    sent = store(dicom_tool, node, lateral_file, frontal_file)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    record = wait_for_state(node, study_uid, "done")
    instances = [pydicom.dcmread(path).SOPInstanceUID for path in (frontal_file, lateral_file)]
    return {"uid": study_uid, "instances": instances, "journal": record}


def test_echoscu_gets_an_answer(node, dicom_tool):
    answer = echo(dicom_tool, node)
    assert answer.returncode == 0, answer.stdout + answer.stderr


def test_a_study_gets_a_valid_sr_of_its_images(node, study, dicom_tool):
    record = study["journal"]
    assert record["instances"] == study["instances"]  # frontal first, though sent second
    assert record["received"] == 2 and record["sr_version"] == 1 and record["error"] is None
    incoming = node.incoming_dir / study["uid"]
    assert sorted(path.stem for path in incoming.glob("*.dcm")) == sorted(study["instances"])
    sr = Path(record["sr"])
    assert sr == node.sr_path(study["uid"])
    verified = subprocess.run([dicom_tool("dciodvfy"), str(sr)], capture_output=True, text=True)
    output = verified.stdout + verified.stderr
    assert not [line for line in output.splitlines() if line.startswith("Error")], output
    dumped = subprocess.run([dicom_tool("dsrdump"), str(sr)], capture_output=True, text=True)
    assert dumped.returncode == 0, dumped.stderr
    dataset = pydicom.dcmread(sr)
    assert dataset.Modality == "SR" and dataset.StudyInstanceUID == study["uid"]
    referenced = {
        str(element.value)
        for element in dataset.iterall()
        if element.keyword == "ReferencedSOPInstanceUID"
    }
    assert set(study["instances"]) <= referenced


def test_the_sr_is_sent_on_to_the_destination(study, storescp):
    _, folder = storescp
    sr_uid = pydicom.dcmread(study["journal"]["sr"]).SOPInstanceUID
    assert study["journal"]["sent_to"] == str(storescp[0])
    arrived = wait_for(lambda: [pydicom.dcmread(path) for path in folder.iterdir()], what="SR")
    assert sr_uid in {dataset.SOPInstanceUID for dataset in arrived}


def test_new_images_after_the_sr_are_diagnosed_again(node, films, dicom_tool, tmp_path):
    study_uid = generate_uid()
    frontal, lateral = films[1]
    sent = store(dicom_tool, node, dx_file(tmp_path / "f.dcm", frontal, study_uid, "AP", jpeg=True))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    first = wait_for_state(node, study_uid, "done", sr_version=1)
    first_sr = pydicom.dcmread(first["sr"]).SOPInstanceUID
    assert len(first["instances"]) == 1
    later = dx_file(tmp_path / "l.dcm", lateral, study_uid, "LATERAL", jpeg=False)
    assert store(dicom_tool, node, later).returncode == 0
    second = wait_for_state(node, study_uid, "done", sr_version=2)
    assert second["instances"][0] == first["instances"][0] and len(second["instances"]) == 2
    assert pydicom.dcmread(second["sr"]).SOPInstanceUID != first_sr


def test_a_calling_ae_title_not_allowed_is_rejected(node, films, dicom_tool, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="medxpert.interop.node")
    assert echo(dicom_tool, node, calling_ae="OTHER").returncode != 0
    study_uid = generate_uid()
    image = dx_file(tmp_path / "f.dcm", films[2][0], study_uid, "PA", jpeg=False)
    assert store(dicom_tool, node, image, calling_ae="OTHER").returncode != 0
    assert not (node.incoming_dir / study_uid).exists()
    assert "calling AE title 'OTHER' is not allowed" in caplog.text


def test_a_ct_image_gets_no_sr_and_the_node_keeps_serving(node, dicom_tool, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="medxpert.interop.node")
    ct = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ct_file = tmp_path / "ct.dcm"
    ct.save_as(ct_file, enforce_file_format=True)
    assert store(dicom_tool, node, ct_file).returncode != 0  # CT Image Storage: not negotiated
    # the same CT exported as a secondary capture: received, and refused by the input guard
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ct.StudyInstanceUID = study_uid = generate_uid()
    ct.save_as(ct_file, enforce_file_format=True)
    sent = store(dicom_tool, node, ct_file)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    record = wait_for_state(node, study_uid, "refused")
    assert "Modality CT" in record["error"] and "sr" not in record
    assert not node.sr_path(study_uid).exists()
    refusals = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any(study_uid in line and "refused" in line for line in refusals)
    assert echo(dicom_tool, node).returncode == 0


def test_a_study_received_before_a_stop_is_diagnosed_after_the_next_start(
    pipeline, films, tmp_path
):
    study_uid = generate_uid()
    folder = tmp_path / "out" / "incoming" / study_uid
    folder.mkdir(parents=True)
    image = dx_file(tmp_path / "image.dcm", films[2][0], study_uid, "PA", jpeg=False)
    image.rename(folder / f"{pydicom.dcmread(image).SOPInstanceUID}.dcm")
    with DicomNode(pipeline, tmp_path / "out", port=0, quiet_seconds=0.2) as node:
        record = wait_for_state(node, study_uid, "done")
    assert Path(record["sr"]).exists() and record["sr_version"] == 1


def test_a_bad_send_to_is_a_user_error(tmp_path, capsys):
    assert main(["dicom-node", "--out", str(tmp_path), "--send-to", "pacs:4242"]) == 2
    assert "HOST:PORT:AE" in capsys.readouterr().err


def test_the_command_serves_until_sigterm(make_workspace, dicom_tool, tmp_path):
    environment = {**os.environ, **make_workspace(tmp_path / "workspace")}
    port = free_port()
    command = [sys.executable, "-m", "medxpert", "dicom-node", "--out", str(tmp_path / "out")]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--ae-title", "NODE", "--allow-ae", CALLING_AE],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        echoscu = [dicom_tool("echoscu"), "-aet", CALLING_AE, "-aec", "NODE", "127.0.0.1"]

        def answered() -> bool:
            echoed = subprocess.run([*echoscu, str(port)], capture_output=True)
            return process.poll() is not None or echoed.returncode == 0

        wait_for(answered, timeout=120, what="the node to answer C-ECHO")
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert "listening on 127.0.0.1" in output and "stopped" in output
