"""Fine-tune the CLIP dual encoder (the original MedXpert's train script).

    python scripts/train_clip.py [--backbone medxpert-default] [--epochs 3] [--out DIR] ...

A thin wrapper over `medxpert train`; run with --help for every option.
"""

import sys

from medxpert.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
