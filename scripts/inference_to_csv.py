"""The ranked results of every query as one table,
results/inference_plots/inference_topk.csv: query, rank, case id, score, labels, snippet
(the original MedXpert script).

    python scripts/inference_to_csv.py --image a.png --text "pneumothorax" [-k 10]
    python scripts/inference_to_csv.py            # 20 random test images

A thin wrapper over `medxpert search --csv PATH`; run with --help for every option.
"""

import sys

from medxpert.cli import main
from medxpert.config import Settings

if __name__ == "__main__":
    arguments = sys.argv[1:]
    if not {"--image", "--text", "--sample"} & set(arguments):
        arguments += ["--sample", "20"]
    out = Settings.from_env().results_dir / "inference_plots" / "inference_topk.csv"
    raise SystemExit(main(["search", "--csv", str(out), *arguments]))
