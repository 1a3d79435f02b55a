"""`medxpert eval fusion`: choose how `--target both` fuses reports and images, on val; save it
next to the index; compare every method on test."""

from __future__ import annotations

import argparse
from pathlib import Path

from medxpert.cli.common import FUSION_CHOICES, add_artifact_arguments
from medxpert.config import Settings

QUERY_SOURCES = ("iu_xray", "nih_cxr14")
CHOOSABLE = tuple(m for m in FUSION_CHOICES if m != "max-cosine")  # raw cosine: a baseline only
ONE_INDEX = {"reports only": 0, "images only": 1}  # baselines: the position in study_lists


def add_eval_command(kinds: argparse._SubParsersAction) -> None:
    """`medxpert eval fusion` (the `eval` parser's kinds call this)."""
    parser = kinds.add_parser(
        "fusion",
        help="choose how target both fuses reports and images (label P@10 on val), save it, "
        "compare every method on test",
        description="Query the IU X-ray frontal views (one per study) and the NIH images: "
        "the validation ones against the library's train split, to measure each index's score "
        "distribution and choose the fusion with the best label P@k over the retrieved studies "
        "(saved next to the index as fusion.json, read by search and diagnose); then the test "
        "ones against the train and val splits, every method side by side with 95% intervals.",
    )
    add_artifact_arguments(parser)
    parser.add_argument("-k", "--k", type=int, default=10, help="studies retrieved per query")
    parser.add_argument("--k0", type=int, default=60, help="the k0 of reciprocal-rank fusion")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument(
        "--out", type=Path, default=None, help="output prefix (default: results/fusion_metrics)"
    )
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    import numpy as np

    from medxpert.data import load_cases
    from medxpert.errors import DataNotFoundError, IndexFormatError
    from medxpert.eval.fusion import FusionSet, evaluate_fusion, fusion_queries
    from medxpert.eval.results import write_results
    from medxpert.eval.retrieval import cached
    from medxpert.index.library import library_artifacts
    from medxpert.labels import NUM_LABELS
    from medxpert.retrieval import Calibration, Filters, Fusion, SearchEngine, write_fusion

    settings = Settings.from_env()
    model_dir, index_dir = library_artifacts(args.index, args.model, settings)
    engine = SearchEngine.from_artifacts(model_dir, index_dir, device=settings.device)
    if not engine.library.count("reports") or not engine.library.count("images"):
        raise DataNotFoundError(
            f"the library {index_dir} needs both a report and an image index to fuse; "
            "build it from sources with images and reports (`medxpert index build`)."
        )
    try:  # the library's own vectors of its (val) images, where it stores them exactly
        stored = engine.library.image_vectors_by_path()
    except IndexFormatError:
        stored = {}
    embed = cached(engine.encoder.encode_images, stored)

    def fusion_of(method: str, stats: dict) -> Fusion:
        return Fusion(method, args.k0, Calibration({"image": stats}))

    def queries(split: str, library_splits: list[str]) -> FusionSet:
        cases = fusion_queries([c for s in QUERY_SOURCES for c in load_cases(s, split)])
        if not cases:
            raise DataNotFoundError(f"no labelled {split} X-rays in {', '.join(QUERY_SOURCES)}.")
        lists = engine.study_lists(
            embed([case.image_path for case in cases]),
            k=args.k,
            target="both",
            filters=Filters.of(splits=library_splits),
        )

        def retrieve(i: int, method: str, stats: dict) -> np.ndarray:
            if method in ONE_INDEX:
                hits = engine.hits(lists[i][ONE_INDEX[method]], args.k)
            else:
                hits = engine.fused_hits(lists[i], args.k, fusion_of(method, stats), "image")
            return np.array([hit.case.labels for hit in hits]).reshape(-1, NUM_LABELS)

        return FusionSet(
            np.stack([case.labels for case in cases]),
            [case.source for case in cases],
            [
                {found[0].modality: [m.cosine for m in found] for found in per_index if found}
                for per_index in lists
            ],
            retrieve,
        )

    val = queries("val", ["train"])
    test = queries("test", ["train", "val"])
    print(f"{len(val.labels)} validation and {len(test.labels)} test queries")
    result = evaluate_fusion(
        val,
        test,
        CHOOSABLE,
        baselines=[*ONE_INDEX, "max-cosine"],
        k=args.k,
        n_boot=args.bootstrap,
    )
    calibration = {m: [round(v, 4) for v in values] for m, values in result.calibration.items()}
    meta = {
        "k": args.k,
        "rrf k0": args.k0,
        "chosen on": f"{len(val.labels)} validation X-rays against the train split",
        f"validation label P@{args.k} by method (chooses)": result.validation,
        "calibration (image queries: mean, std of the top-k cosines per index)": calibration,
        "fusion": result.method,
        "bootstrap": args.bootstrap,
    }
    prefix = args.out or settings.results_dir / "fusion_metrics"
    paths = write_results(
        result.rows,
        prefix,
        result.columns,
        title="Fusing reports and images (target both), test split",
        meta=meta,
    )
    saved = write_fusion(
        index_dir,
        fusion_of(result.method, result.calibration),
        engine.encoder.fingerprint(),
        chosen_on="val",
        k=args.k,
        validation_label_precision=result.validation,
    )
    print(paths["md"].read_text())
    print(f"saved the fusion {result.method} to {saved}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
