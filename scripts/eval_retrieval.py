"""Retrieval evaluation: Recall@K / MRR (paired), label P@K, class-balanced 5×N and kNN AUC,
fine-tuned vs untuned vs chance with 95% bootstrap intervals.

    python scripts/eval_retrieval.py [--model models/medxpert-default] [--split test] ...

A thin wrapper over `medxpert eval retrieval`; run with --help for every option.
"""

import sys

from medxpert.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["eval", "retrieval", *sys.argv[1:]]))
