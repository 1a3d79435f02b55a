"""Diagnose an X-ray (with an optional clinical note) or a text query: retrieve similar cases,
caption, and write a structured report (the original MedXpert script).

    python scripts/run_inference_pipeline.py --image cxr.png --note "fever, cough" --json r.json
    python scripts/run_inference_pipeline.py --text "cardiomegaly with effusion"

A thin wrapper over `medxpert diagnose`; run with --help for every option.
"""

import sys

from medxpert.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["diagnose", *sys.argv[1:]]))
