"""Search the case library (the original MedXpert script).

    python scripts/run_search_engine.py --image path/to/cxr.png [--note "fever, cough"] [-k 10]
    python scripts/run_search_engine.py --text "left lower lobe consolidation" --target images

A thin wrapper over `medxpert search`; run with --help for every option.
"""

import sys

from medxpert.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["search", *sys.argv[1:]]))
