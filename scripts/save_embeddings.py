"""Embed the case library and save it, plus the raw embeddings (the original MedXpert script).

    python scripts/save_embeddings.py [--model models/medxpert-default] [--source nih_cxr14 ...]
        [--split train --split val] [--embeddings results/embeddings]

A thin wrapper over `medxpert index build --embeddings DIR` (default DIR: results/embeddings):
the FAISS indexes go to indexes/<name>/, the .npy vectors and their case ids to DIR.
"""

import sys

from medxpert.cli import main
from medxpert.config import Settings

if __name__ == "__main__":
    arguments = sys.argv[1:]
    if "--embeddings" not in arguments:
        arguments += ["--embeddings", str(Settings.from_env().results_dir / "embeddings")]
    raise SystemExit(main(["index", "build", *arguments]))
