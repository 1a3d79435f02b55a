"""A PNG per query: the query and its top-K cases with scores, labels and report snippets,
under results/inference_plots/ (the original MedXpert script).

    python scripts/inference_plot.py --image a.png --text "cardiomegaly with effusion"
    python scripts/inference_plot.py              # 5 random test images

A thin wrapper over `medxpert search --plot DIR`; run with --help for every option.
"""

import sys

from medxpert.cli import main
from medxpert.config import Settings

if __name__ == "__main__":
    arguments = sys.argv[1:]
    if not {"--image", "--text", "--sample"} & set(arguments):
        arguments += ["--sample", "5"]
    out = Settings.from_env().results_dir / "inference_plots"
    raise SystemExit(main(["search", "--plot", str(out), *arguments]))
