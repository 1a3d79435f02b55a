"""Raw embeddings on disk, as the original MedXpert's save_embeddings.py wrote them.

<dir>/image_embeddings.npy    (n, d) float32, L2-normalised
<dir>/image_ids.csv           row, case_id, study_id, source, split, image_path
<dir>/report_embeddings.npy   (m, d)
<dir>/report_ids.csv          row, case_id, study_id, source, split
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medxpert.atomic import atomic_path
from medxpert.data import Case
from medxpert.index.library import Embeddings

FILE_PREFIX = {"images": "image", "reports": "report"}


def write_embeddings(
    directory: str | Path, cases: Sequence[Case], embeddings: dict[str, Embeddings]
) -> list[Path]:
    """Write each modality's vectors (.npy) and the cases they belong to (.csv), atomically."""
    directory = Path(directory)
    written = []
    for modality, found in embeddings.items():
        prefix = FILE_PREFIX[modality]
        vectors_path = directory / f"{prefix}_embeddings.npy"
        with atomic_path(vectors_path) as tmp, tmp.open("wb") as handle:
            np.save(handle, found.vectors.astype(np.float32))
        table = pd.DataFrame(
            {
                "row": found.rows,
                "case_id": [cases[r].case_id for r in found.rows],
                "study_id": [cases[r].study_id for r in found.rows],
                "source": [cases[r].source for r in found.rows],
                "split": [cases[r].split for r in found.rows],
                "image_path": [cases[r].image_path for r in found.rows],
            }
        )
        ids_path = directory / f"{prefix}_ids.csv"
        with atomic_path(ids_path) as tmp:
            table.to_csv(tmp, index=False)
        written += [vectors_path, ids_path]
    return written


def read_embeddings(directory: str | Path, modality: str) -> tuple[np.ndarray, pd.DataFrame]:
    """(vectors, ids table) written by `write_embeddings`."""
    prefix = FILE_PREFIX[modality]
    directory = Path(directory)
    vectors = np.load(directory / f"{prefix}_embeddings.npy")
    return vectors, pd.read_csv(directory / f"{prefix}_ids.csv", dtype={"case_id": str})
