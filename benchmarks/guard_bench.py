"""How well the input guard tells chest X-rays from everything else.

    .venv/bin/python benchmarks/guard_bench.py [--model DIR] [--index DIR]

Non-chest inputs:
- every file of pydicom's own test data (`pydicom/data/test_files`, real files nobody here
  wrote: CT, MR, NM, US, RT dose and plan, segmentations, secondary captures, SR, waveforms, and
  files with no image), as `medxpert diagnose` would read them: unreadable or image-less files
  are refused by the reader, readable ones go through the guard;
- the same images again as header-less PNGs, so that only the pixel and embedding checks
  can refuse them (what the guard does with a screenshot of a CT slice);
- photographs that ship with the installed packages (sklearn's, matplotlib's) and generated
  images (noise, ramps, blank).
Chest X-rays: every test-split X-ray of the shared packs (IU X-ray, NIH ChestX-ray14, COVID),
none of which the library holds. Figures: the share refused, by check. Writes
results/guard_bench.json.
"""

from __future__ import annotations

import argparse
import io
import platform
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from medxpert.atomic import atomic_write_json
from medxpert.config import Settings
from medxpert.data import load_cases, open_image
from medxpert.data.images import dicom_header
from medxpert.errors import InvalidImageError
from medxpert.guard import InputGuard
from medxpert.guard.header import header_problems
from medxpert.guard.pixels import pixel_problems
from medxpert.index.library import library_artifacts
from medxpert.retrieval import SearchEngine

PACKS = ("iu_xray", "nih_cxr14", "covid_cxr")


def pydicom_files() -> list[Path]:
    from pydicom.data import get_testdata_file

    folder = Path(get_testdata_file("CT_small.dcm")).parent
    return sorted(path for path in folder.rglob("*") if path.is_file())


def photographs() -> dict[str, Image.Image]:
    """Pictures that ship with installed packages, and generated ones."""
    import matplotlib
    import sklearn

    found = [
        Path(sklearn.__file__).parent / "datasets/images/china.jpg",
        Path(sklearn.__file__).parent / "datasets/images/flower.jpg",
        Path(matplotlib.get_data_path()) / "sample_data/grace_hopper.jpg",
        Path(matplotlib.get_data_path()) / "sample_data/Minduka_Present_Blue_Pack.png",
        Path(matplotlib.get_data_path()) / "sample_data/logo2.png",
    ]
    images = {path.name: open_image(path) for path in found if path.is_file()}
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0, 255, 256), (256, 1)).astype(np.uint8)
    for name, pixels in {
        "noise": rng.integers(0, 256, (256, 256)).astype(np.uint8),
        "horizontal ramp": ramp,
        "vertical ramp": np.ascontiguousarray(ramp.T),
        "blank": np.full((256, 256), 128, np.uint8),
        "checkerboard": (np.indices((256, 256)).sum(0) // 32 % 2 * 255).astype(np.uint8),
    }.items():
        images[name] = Image.fromarray(pixels)
    return images


def header_less(image: Image.Image) -> Image.Image:
    """The decoded picture as a plain PNG would give it: pixels, no DICOM header."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return open_image(buffer.getvalue())


class CosineBaseline:
    """The obvious embedding check, for comparison: refuse an image whose nearest library
    train image is less similar (cosine) than that of all but 0.5% of the val images."""

    def __init__(self, engine: SearchEngine) -> None:
        self.train, _ = engine.library.image_vectors(splits=["train"])
        val, _ = engine.library.image_vectors(splits=["val"])
        self.threshold = float(np.quantile(self.nearest(val), 0.005))

    def nearest(self, vectors: np.ndarray) -> np.ndarray:
        return (vectors @ self.train.T).max(axis=1)

    def flags(self, vectors: np.ndarray) -> list[bool]:
        return [bool(s < self.threshold) for s in self.nearest(vectors)]


def verdicts(
    guard: InputGuard, baseline: CosineBaseline, engine: SearchEngine, images: list[Image.Image]
) -> list[dict]:
    """Per image: which checks flag it (header, pixels, embedding), and the cosine baseline."""
    vectors = engine.encoder.encode_images(images, progress=False)
    embedding = guard.vector_problems(vectors)
    return [
        {
            "header": bool(header_problems(dicom_header(image))),
            "pixels": bool(pixel_problems(image)),
            "embedding": bool(flagged),
            "cosine_baseline": cosine,
        }
        for image, flagged, cosine in zip(images, embedding, baseline.flags(vectors), strict=True)
    ]


CHECKS = ("reader", "header", "pixels", "embedding")


def _flagged(row: dict) -> bool:
    return any(row.get(check) for check in CHECKS)


def summary(rows: list[dict]) -> dict:
    """Shares refused in all and by each check."""
    count = len(rows)
    refused = sum(_flagged(row) for row in rows)
    by_check = Counter(check for row in rows for check in CHECKS if row.get(check))
    return {
        "n": count,
        "refused": refused,
        "share_refused": round(refused / count, 4) if count else None,
        "by_check": dict(by_check),
        "embedding_check_alone": _share(rows, "embedding"),
        "cosine_baseline_alone": _share(rows, "cosine_baseline"),
    }


def _share(rows: list[dict], key: str) -> float | None:
    """The share of the encoded rows (those that decoded) that `key` flags."""
    encoded = [row[key] for row in rows if key in row]
    return round(float(np.mean(encoded)), 4) if encoded else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    settings = Settings.from_env()
    parser.add_argument("--index", help="library name or folder (default: MEDXPERT_ENCODER's)")
    parser.add_argument("--model", type=Path, help="default: the model the library records")
    parser.add_argument("--out", type=Path, default=settings.results_dir / "guard_bench.json")
    args = parser.parse_args()
    args.model, args.index = library_artifacts(args.index, args.model, settings)

    engine = SearchEngine.from_artifacts(args.model, args.index, device=settings.device)
    guard = InputGuard.for_library(engine.library, args.index, engine.encoder.fingerprint())
    baseline = CosineBaseline(engine)

    dicom_rows, readable, names = [], [], []
    for path in pydicom_files():
        try:
            image = open_image(path)
        except InvalidImageError as error:
            dicom_rows.append({"file": path.name, "reader": str(error)[:160]})
            continue
        readable.append(image)
        names.append(path.name)
    for name, row in zip(names, verdicts(guard, baseline, engine, readable), strict=True):
        dicom_rows.append({"file": name, **row})
    stripped = verdicts(guard, baseline, engine, [header_less(image) for image in readable])
    pictures = photographs()
    picture_rows = [
        {"file": name, **row}
        for name, row in zip(
            pictures, verdicts(guard, baseline, engine, list(pictures.values())), strict=True
        )
    ]

    chest = {}
    for source in PACKS:
        cases = [case for case in load_cases(source, "test") if case.has_image]
        rows = []
        for start in tqdm(range(0, len(cases), 64), desc=f"{source} test X-rays"):
            batch = cases[start : start + 64]
            for case, row in zip(
                batch,
                verdicts(guard, baseline, engine, [open_image(c.image_path) for c in batch]),
                strict=True,
            ):
                rows.append({"case_id": case.case_id, **row})
        chest[source] = rows

    embedding = guard.embedding
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "model": str(args.model),
        "library": str(args.index),
        "embedding_guard": None
        if embedding is None
        else {"threshold": embedding.threshold, **embedding.meta},
        "pydicom_files": summary(dicom_rows),
        "pydicom_readable_images": summary([r for r in dicom_rows if "reader" not in r]),
        "pydicom_images_without_header": summary(stripped),
        "photographs_and_generated": summary(picture_rows),
        "chest_xrays_test": {source: summary(rows) for source, rows in chest.items()},
        "chest_xrays_test_all": summary([row for rows in chest.values() for row in rows]),
        "passed_non_chest": [r["file"] for r in dicom_rows + picture_rows if not _flagged(r)],
        "passed_without_header": [
            n for n, r in zip(names, stripped, strict=True) if not _flagged(r)
        ],
        "refused_chest": [r["case_id"] for rows in chest.values() for r in rows if _flagged(r)],
        "rows": {"pydicom": dicom_rows, "photographs": picture_rows},
    }
    atomic_write_json(args.out, record)
    for key in (
        "pydicom_files",
        "pydicom_readable_images",
        "pydicom_images_without_header",
        "photographs_and_generated",
        "chest_xrays_test_all",
    ):
        print(key, record[key])
    for source, value in record["chest_xrays_test"].items():
        print(" ", source, value)
    print("non-chest inputs that passed:", record["passed_non_chest"])
    print("header-less pydicom images that passed:", record["passed_without_header"])
    print("chest X-rays refused:", record["refused_chest"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
