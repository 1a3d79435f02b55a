"""Builders of test fixtures written in the real published formats."""

from __future__ import annotations

import io
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from medxpert.data import Case
from medxpert.labels import label_vector
from medxpert.retrieval import Hit


def gradient(
    height: int = 160, width: int = 192, low: int = 0, high: int = 255, dtype: type = np.uint8
) -> np.ndarray:
    """A left-to-right ramp from `low` to `high` (by default large enough, and with contrast
    enough, for the input guard's pixel checks)."""
    row = np.linspace(low, high, width)
    return np.tile(row, (height, 1)).astype(dtype)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png_with_declared_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares `width`×`height` but whose data is a few bytes (a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def dicom_bytes(
    frames: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    transfer_syntax: str | None = None,
    encapsulated: list[bytes] | None = None,
    bits_stored: int = 12,
    with_pixels: bool = True,
    extra: dict | None = None,
) -> bytes:
    """A DICOM file (with preamble) of one frame (H, W) or several (N, H, W) of uint16/uint8;
    `extra` sets more attributes by keyword (e.g. ``{"PatientName": "Doe^Jane"}``)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    frames = np.asarray(frames)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "TEST"
    ds.Rows, ds.Columns = frames.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if frames.dtype == np.uint8 else 16
    ds.BitsStored = 8 if frames.dtype == np.uint8 else bits_stored
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames.ndim == 3:
        ds.NumberOfFrames = frames.shape[0]
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    if with_pixels:
        if encapsulated is not None:
            ds.PixelData = encapsulate(encapsulated)
            ds["PixelData"].is_undefined_length = True
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = frames.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough and fever

 COMPARISON:  ___

 FINDINGS:
 There is a new right lower lobe consolidation.  Small right pleural
 effusion.  No pneumothorax.  Heart size is normal.

 IMPRESSION:
 Right lower lobe pneumonia with small parapneumonic effusion.
"""

MIMIC_REPORT_NO_SECTIONS = """                                 FINAL REPORT
 CHEST RADIOGRAPH

 The lungs are clear.

 No acute cardiopulmonary process.
"""


def make_mimic_tree(root: Path, *, compress: bool = True, reports_zip: bool = False) -> dict:
    """A small MIMIC-CXR-JPG tree: 3 patients, 4 studies, 6 images (one listed but missing)."""
    import zipfile

    import pandas as pd

    from medxpert.labels import CHEXPERT_LABELS

    studies = [  # subject, study, split, [(dicom_id, view)], report
        ("10000032", "50414267", "train", [("d1", "PA"), ("d2", "LATERAL")], MIMIC_REPORT),
        ("10000032", "53189527", "train", [("d3", "AP")], MIMIC_REPORT_NO_SECTIONS),
        ("11000011", "51234567", "validate", [("d4", "PA")], MIMIC_REPORT),
        ("12000022", "52222222", "test", [("d5", "AP"), ("d6-missing", "PA")], MIMIC_REPORT),
    ]
    metadata, split_rows, label_rows, reports = [], [], [], {}
    for subject, study, split, images, report in studies:
        study_dir = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        for dicom_id, view in images:
            metadata.append(
                {
                    "dicom_id": dicom_id,
                    "subject_id": subject,
                    "study_id": study,
                    "ViewPosition": view,
                    "Rows": 32,
                    "Columns": 48,
                }
            )
            split_rows.append(
                {"dicom_id": dicom_id, "study_id": study, "subject_id": subject, "split": split}
            )
            if "missing" not in dicom_id:
                study_dir.mkdir(parents=True, exist_ok=True)
                (study_dir / f"{dicom_id}.jpg").write_bytes(jpeg_bytes(gradient()))
        reports[f"files/p{subject[:2]}/p{subject}/s{study}.txt"] = report
        labels = dict.fromkeys(CHEXPERT_LABELS, "")
        labels.update(
            {"Consolidation": 1.0, "Pleural Effusion": 1.0, "Pneumothorax": 0.0, "Pneumonia": -1.0}
            if report is MIMIC_REPORT
            else {"No Finding": 1.0}
        )
        label_rows.append({"subject_id": subject, "study_id": study, **labels})
    suffix = ".csv.gz" if compress else ".csv"
    pd.DataFrame(metadata).to_csv(root / f"mimic-cxr-2.0.0-metadata{suffix}", index=False)
    pd.DataFrame(split_rows).to_csv(root / f"mimic-cxr-2.0.0-split{suffix}", index=False)
    pd.DataFrame(label_rows).to_csv(root / f"mimic-cxr-2.0.0-chexpert{suffix}", index=False)
    if reports_zip:
        with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as archive:
            for name, text in reports.items():
                archive.writestr(name, text)
    else:
        for name, text in reports.items():
            (root / name).write_text(text)
    return {"studies": studies}


def hf_rows(n: int = 12) -> dict[str, list]:
    """Columns of a small image/findings/impression dataset (images as PNG bytes)."""
    return {
        "image": [
            {"bytes": png_bytes(gradient(low=i, high=200 + i)), "path": None} for i in range(n)
        ],
        "findings": [f"Finding text {i}. No pleural effusion." for i in range(n)],
        "impression": [("Cardiomegaly." if i % 2 else "No acute process.") for i in range(n)],
    }


TOY_WORDS = (
    "no",
    "pleural",
    "effusion",
    "pneumothorax",
    "heart",
    "size",
    "normal",
    "large",
    "small",
    "left",
    "right",
    "cardiomegaly",
    "edema",
    "level",
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "a",
    "b",
    "c",
    "d",
)


def tiny_text_tower(directory: Path) -> Path:
    """A 2-layer, 32-wide BERT with a small WordPiece vocabulary, saved like a HF model folder."""
    from transformers import BertConfig, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *TOY_WORDS]
    # transformers 5 takes the vocabulary itself (a `vocab_file=` argument is ignored)
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)})
    tokenizer.save_pretrained(str(directory))
    BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    ).save_pretrained(str(directory))
    return directory


TINY_VISION = {
    "timm_model_name": "test_efficientnet",
    "timm_model_pretrained": False,
    "timm_pool": "avg",
    "timm_proj": "mlp",
    "image_size": 64,
}


def tiny_encoder(tmp_path: Path, seed: int = 0):
    """A tiny open_clip dual encoder with the offline default's layout, random weights."""
    import torch

    from medxpert.encoders import DualEncoder

    torch.manual_seed(seed)
    tower = tiny_text_tower(tmp_path / "tiny_text_tower")
    return DualEncoder.create(
        "medxpert-default",
        pretrained=False,
        text_tower=tower,
        device="cpu",
        embed_dim=16,
        vision_cfg=dict(TINY_VISION),
        text_cfg={
            "hf_model_name": "x",
            "hf_tokenizer_name": "x",
            "hf_proj_type": "mlp",
            "hf_pooler_type": "mean_pooler",
            "context_length": 32,
        },
    )


def tiny_pipeline(root: Path):
    """A `DiagnosisPipeline` over `library_cases` (every image labelled Edema) with a tiny
    encoder, the label captioner and the offline writer, k = 5."""
    from medxpert.caption import LabelCaptioner
    from medxpert.index import CaseLibrary
    from medxpert.pipeline import DiagnosisPipeline
    from medxpert.report import OfflineWriter
    from medxpert.retrieval import SearchEngine

    encoder = tiny_encoder(root)
    library = CaseLibrary.build(encoder, library_cases(root))
    return DiagnosisPipeline(
        SearchEngine(library, encoder), LabelCaptioner(encoder), OfflineWriter(), k=5
    )


def mini_packs(target: Path, shared: dict[str, Path], per_split: dict[str, int]) -> Path:
    """Small copies of the shared packs (real rows and images, first N per split) under
    `target`, to point MEDXPERT_DATA_DIR at."""
    import shutil

    import pandas as pd

    tables = {"nih_cxr14": "labels.csv", "iu_xray": "reports.csv", "covid_cxr": "reports.csv"}
    for pack, table in tables.items():
        frame = pd.read_csv(shared[pack] / table, dtype=str, keep_default_na=False)
        frame = pd.concat(
            [frame[frame["split"] == split].head(n) for split, n in per_split.items()]
        )
        (target / pack / "images").mkdir(parents=True, exist_ok=True)
        frame.to_csv(target / pack / table, index=False)
        for relative in frame["image_path"]:
            if relative:
                shutil.copy(shared[pack] / relative, target / pack / relative)
    return target


def image_case(path: Path, pixels: np.ndarray, **fields) -> Case:
    """A case (split train unless `fields` say otherwise) whose X-ray is `pixels`, written to
    `path` as a PNG."""
    path.write_bytes(png_bytes(np.asarray(pixels).astype(np.uint8)))
    return Case(**{"split": "train", **fields}, image_path=str(path))


def library_cases(tmp_path: Path) -> list[Case]:
    """12 labelled image-only cases (8 train, 4 test; two per patient) and 6 text-only cases
    in 3 studies (two images of a study share one report)."""
    cases = []
    for i in range(12):
        cases.append(
            image_case(
                tmp_path / f"img{i}.png",
                gradient(low=i * 10, high=100 + i * 10),
                case_id=f"nih:{i}",
                source="nih",
                split="train" if i < 8 else "test",
                study_id=f"nih:{i}",
                patient_id=f"p{i // 2}",
                view="frontal",
                labels=label_vector({"Edema": 1}),
            )
        )
    for i in range(6):  # two images per study share one report
        cases.append(
            Case(
                case_id=f"iu:{i}",
                source="iu",
                split="test",
                study_id=f"iu:s{i // 2}",
                patient_id=f"iu:s{i // 2}",
                view="lateral" if i % 2 else "frontal",
                findings=f"level {TOY_WORDS[TOY_WORDS.index('zero') + i // 2]} pleural effusion.",
            )
        )
    return cases


def tiny_blip(directory: Path) -> Path:
    """A 1-layer, 32-wide BLIP (vision and text) with a small vocabulary, random weights, saved
    with its processor like a Hugging Face folder."""
    import torch
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        BlipTextConfig,
        BlipVisionConfig,
    )

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", ".", ",", *TOY_WORDS]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, bos_token="[DEC]")
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    small = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    }
    config = BlipConfig(
        text_config=BlipTextConfig(
            vocab_size=len(vocab),
            max_position_embeddings=64,
            bos_token_id=vocab.index("[DEC]"),
            pad_token_id=0,
            sep_token_id=3,
            encoder_hidden_size=32,
            **small,
        ).to_dict(),
        vision_config=BlipVisionConfig(image_size=32, patch_size=8, **small).to_dict(),
        projection_dim=32,
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(str(directory))
    processor.save_pretrained(str(directory))
    return directory


def tiny_workspace(root: Path, shared: dict[str, Path]) -> dict[str, str]:
    """A complete MedXpert workspace under `root` for app and API tests: miniature data packs,
    a tiny saved model at models/medxpert-default and its case library (train + val) at
    indexes/medxpert-default. Returns the MEDXPERT_* environment variables that point at it."""
    from medxpert.config import Settings
    from medxpert.data import load_cases
    from medxpert.index import CaseLibrary, embed_cases

    data = mini_packs(root / "data", shared, {"train": 24, "val": 8, "test": 12})
    environment = {
        "MEDXPERT_DATA_DIR": str(data),
        "MEDXPERT_MODELS_DIR": str(root / "models"),
        "MEDXPERT_INDEXES_DIR": str(root / "indexes"),
        "MEDXPERT_RESULTS_DIR": str(root / "results"),
        "MEDXPERT_CACHE_DIR": str(root / "cache"),
    }
    settings = Settings.from_env(environment)
    encoder = tiny_encoder(root)
    encoder.save(settings.models_dir / "medxpert-default")
    cases = [
        case
        for source in ("nih_cxr14", "iu_xray", "covid_cxr")
        for case in load_cases(source, ["train", "val"], settings=settings)
    ]
    library = CaseLibrary.from_embeddings(encoder, cases, embed_cases(encoder, cases))
    library.save(settings.indexes_dir / "medxpert-default")
    return environment


def report_hit(
    case_id: str, score: float, findings: str, labels: dict, *, rank: int = 1, impression: str = ""
) -> Hit:
    """A retrieved IU study matched by its report: `findings`, `impression`, CheXpert `labels`."""
    case = Case(
        case_id=case_id,
        source="iu_xray",
        split="train",
        study_id=case_id,
        findings=findings,
        impression=impression,
        labels=label_vector(labels),
    )
    return Hit(case, score, rank, "report")


def send_json(handler, status: int, data: bytes) -> None:
    """Answer an HTTP request of a loopback server (`BaseHTTPRequestHandler`) with JSON `data`;
    a client that has given up (a timeout test) is no error."""
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_process(workspace: dict[str, str], *arguments: str):
    """`medxpert serve` (offline, no API key, the `workspace` settings) in a subprocess on a
    free loopback port, and its base URL."""
    import os
    import subprocess
    import sys

    port = free_port()
    environment = {**os.environ, **workspace, "HF_HUB_OFFLINE": "1"}
    environment.pop("MEDXPERT_API_KEY", None)
    command = [sys.executable, "-m", "medxpert", "serve", "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--port", str(port), *arguments],
        env=environment,
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return server, f"http://127.0.0.1:{port}"


def wait_for_health(server, base: str, timeout: float = 120):
    """The server's first 200 answer to /health; fails when it exits or takes over `timeout`."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        assert server.poll() is None, server.communicate()[0]
        try:
            health = httpx.get(f"{base}/health", timeout=2)
            if health.status_code == 200:
                return health
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the server did not start in {timeout} s"
        time.sleep(0.3)
