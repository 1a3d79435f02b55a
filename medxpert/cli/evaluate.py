"""`medxpert eval retrieval`: retrieval metrics, fine-tuned vs untuned vs chance."""

from __future__ import annotations

import argparse
from pathlib import Path

from medxpert.cli import fusion, guard, reports
from medxpert.cli.common import add_artifact_arguments, add_source_arguments, load_sources
from medxpert.config import Settings


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("eval", help="evaluate models")
    kinds = parser.add_subparsers(title="evaluations", metavar="KIND")
    retrieval = kinds.add_parser(
        "retrieval", help="Recall@K, MRR, label P@K, 5×N, kNN AUC with 95%% intervals"
    )
    retrieval.add_argument(
        "--model",
        type=Path,
        default=None,
        help="fine-tuned model directory (default: models/<MEDXPERT_ENCODER>)",
    )
    retrieval.add_argument(
        "--baseline",
        default=None,
        help="untuned backbone to compare with (default: the model's own)",
    )
    retrieval.add_argument(
        "--index",
        default=None,
        help="case library built with --model: its stored image vectors are used instead of "
        "embedding those images again (refused if built with another model)",
    )
    add_source_arguments(retrieval)
    retrieval.add_argument("--split", default="test", choices=("val", "test"))
    retrieval.add_argument("--knn-k", type=int, default=None, help="neighbours for kNN AUC")
    retrieval.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    retrieval.add_argument(
        "--out", type=Path, default=None, help="output prefix (default: results/retrieval_metrics)"
    )
    retrieval.set_defaults(run=_run_retrieval)

    context = kinds.add_parser(
        "context",
        help="clinical context A/B: X-rays alone against X-rays + their clinical notes",
        description="Query every COVID-pack X-ray whose case note has a history part, alone "
        "and with that history as the clinical note, leaving its own patient out of the "
        "results: label P@k and per-label AUC of the probabilities, side by side.",
    )
    add_artifact_arguments(context)
    context.add_argument("-k", "--k", type=int, default=10)
    context.add_argument("--note-weight", type=float, default=None)
    context.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    context.add_argument(
        "--out", type=Path, default=None, help="output prefix (default: results/context_metrics)"
    )
    context.set_defaults(run=_run_context)

    blend = kinds.add_parser(
        "blend",
        help="choose the zero-shot blend weight on val, measure it on test, save it",
        description="Blend the retrieved cases' label vote with the label captioner's zero-shot "
        "probabilities: choose the weight with the lowest Brier score on the validation X-rays, "
        "save it next to the index (blend.json, read by diagnose), and compare vote, zero-shot "
        "and blend on the test X-rays.",
    )
    add_artifact_arguments(blend)
    blend.add_argument("-k", "--k", type=int, default=10)
    blend.add_argument(
        "--target",
        choices=("reports", "images", "both"),
        default="both",
        help="what the queries retrieve (default both, as diagnose does)",
    )
    blend.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    blend.add_argument(
        "--out", type=Path, default=None, help="output prefix (default: results/blend_metrics)"
    )
    blend.set_defaults(run=_run_blend)

    fusion.add_eval_command(kinds)
    reports.add_eval_commands(kinds)
    guard.add_eval_command(kinds)


def _run_retrieval(args: argparse.Namespace) -> None:
    import torch

    from medxpert.encoders import DualEncoder
    from medxpert.eval.results import write_results
    from medxpert.eval.retrieval import KNN_K, Embedder, RetrievalSets, cached, evaluate

    settings = Settings.from_env()
    tuned = DualEncoder.load(
        args.model or settings.encoder, models_dir=settings.models_dir, device=settings.device
    )
    torch.manual_seed(0)  # the untuned model's new projection heads: the same every run
    untuned = DualEncoder.create(args.baseline or tuned.backbone, device=settings.device)
    if untuned.backbone == tuned.backbone:  # the same input, so the difference is the tuning
        untuned.preprocess = dict(tuned.preprocess)
    # the untuned towers share the frozen stages, so both read the same cached features
    tuned.use_feature_cache(settings.cache_dir / "features")
    untuned.use_feature_cache(
        settings.cache_dir / "features",
        image_stages=tuned.image_stages.frozen_stages if tuned.image_stages else None,
    )
    sets = RetrievalSets.from_cases(
        load_sources(args.source, args.split), load_sources(args.source, "train")
    )
    print(f"evaluating on {sets.describe()}")
    knn_k = args.knn_k or KNN_K
    tuned_images = tuned.encode_images
    if args.index:
        tuned_images = cached(tuned_images, _library_image_vectors(args.index, tuned, settings))
    models = {
        "untuned": Embedder(untuned.encode_images, untuned.encode_texts),
        "fine-tuned": Embedder(tuned_images, tuned.encode_texts),
    }
    rows = evaluate(models, sets, knn_k=knn_k, n_boot=args.bootstrap)
    meta = {
        "model": tuned.info["path"],
        "baseline": untuned.backbone,
        "split": args.split,
        "sets": sets.describe(),
        "knn_k": knn_k,
        "index": args.index,
        "bootstrap": args.bootstrap,
    }
    paths = write_results(
        rows,
        args.out or settings.results_dir / "retrieval_metrics",
        ["chance", "untuned", "fine-tuned"],
        title=f"Retrieval, {args.split} split",
        meta=meta,
    )
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def _library_image_vectors(name: str, encoder, settings: Settings) -> dict:
    from medxpert.index import CaseLibrary

    vectors = CaseLibrary.load(settings.library_path(name), encoder=encoder).image_vectors_by_path()
    print(f"taking {len(vectors)} image vectors from the case library {name}")
    return vectors


def _run_context(args: argparse.Namespace) -> None:
    import numpy as np

    from medxpert.data import load_cases
    from medxpert.eval.context import Retrieved, context_items, evaluate_context
    from medxpert.eval.results import write_results
    from medxpert.index.library import library_artifacts
    from medxpert.labels import CHEXPERT_LABELS
    from medxpert.pipeline import DiagnosisPipeline
    from medxpert.retrieval import DEFAULT_NOTE_WEIGHT, Filters

    settings = Settings.from_env()
    pipeline = DiagnosisPipeline.from_artifacts(
        *library_artifacts(args.index, args.model, settings),
        device=settings.device,
        note_weight=args.note_weight if args.note_weight is not None else DEFAULT_NOTE_WEIGHT,
    )
    items = context_items(
        [case for split in ("train", "val", "test") for case in load_cases("covid_cxr", split)]
    )

    def query(image: str, note: str | None, patient: str) -> Retrieved:
        diagnosis = pipeline.diagnose(  # past the input guard: every labelled X-ray counts
            image=image,
            note=note,
            k=args.k,
            filters=Filters.of(exclude_patients=[patient]),
            force=True,
        )
        return Retrieved(
            np.stack([hit.case.labels for hit in diagnosis.hits]),
            np.array([diagnosis.probabilities[label] for label in CHEXPERT_LABELS]),
        )

    conditions = {"image only": False, "image + note": True}
    rows = evaluate_context(items, conditions, query, n_boot=args.bootstrap)
    paths = write_results(
        rows,
        args.out or settings.results_dir / "context_metrics",
        list(conditions),
        title=f"Clinical context A/B ({len(items)} COVID-pack X-rays with a history note)",
        meta={"k": args.k, "note_weight": pipeline.engine.note_weight, "bootstrap": args.bootstrap},
    )
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def _run_blend(args: argparse.Namespace) -> None:
    import numpy as np

    from medxpert.caption.labels import LabelCaptioner
    from medxpert.data import load_cases
    from medxpert.errors import DataNotFoundError
    from medxpert.eval.blend import BlendQuery, choose_weight, collect, evaluate_blend
    from medxpert.eval.plots import weight_curve
    from medxpert.eval.results import write_results
    from medxpert.index.library import library_artifacts
    from medxpert.pipeline import DiagnosisPipeline
    from medxpert.retrieval import Filters
    from medxpert.retrieval.probabilities import label_probabilities, write_blend_weight

    settings = Settings.from_env()
    model_dir, index_dir = library_artifacts(args.index, args.model, settings)
    pipeline = DiagnosisPipeline.from_artifacts(
        model_dir,
        index_dir,
        device=settings.device,
        zero_shot_weight=0.0,
    )
    engine, encoder = pipeline.engine, pipeline.engine.encoder

    def vote(vector, patient: str) -> dict[str, float]:
        leave_out = Filters.of(exclude_patients=[patient])
        hits = engine.search_vectors(vector[None], k=args.k, target=args.target, filters=leave_out)
        return label_probabilities(hits[0]).probabilities

    def queries(vectors, cases) -> list[BlendQuery]:
        return [BlendQuery(v, c.patient_id, c.labels) for v, c in zip(vectors, cases, strict=True)]

    # for choosing on val, the captioner is calibrated on the train X-rays only
    val_captioner = LabelCaptioner(encoder)
    train_vectors, train_cases = engine.library.image_vectors(["train"])
    val_captioner.calibrate(train_vectors, np.stack([case.labels for case in train_cases]))
    val = collect(
        queries(*engine.library.image_vectors(["val"])),
        vote,
        lambda vector: val_captioner.probabilities(vector=vector),
    )
    weight, table = choose_weight(val)
    if not table:
        raise DataNotFoundError(
            f"none of the {len(val.truth)} validation X-rays' labels that the captioner scores "
            "has enough positives and negatives to choose a blend weight on; add labelled "
            "validation X-rays."
        )
    labels = val.labels()
    val_brier = {w: round(scores["Brier"], 4) for w, scores in table.items()}
    val_auc = {w: round(scores["macro AUC"], 4) for w, scores in table.items()}
    print(f"validation Brier score by weight ({len(val.truth)} X-rays): {val_brier}")
    print(f"validation macro AUC by weight: {val_auc}")
    test_cases = [
        case
        for source in ("nih_cxr14", "covid_cxr")
        for case in load_cases(source, "test")
        if case.has_image
    ]
    vectors = encoder.encode_images([case.image_path for case in test_cases])
    test = collect(
        queries(vectors, test_cases),
        vote,
        lambda vector: pipeline.captioner.probabilities(vector=vector),
    )
    systems, rows = evaluate_blend(test, weight, labels, task="test X-rays", n_boot=args.bootstrap)
    prefix = args.out or settings.results_dir / "blend_metrics"
    meta = {
        "k": args.k,
        "target": args.target,
        "chosen on": f"{len(val.truth)} validation X-rays (captioner calibrated on train)",
        "validation Brier score by weight (chooses)": val_brier,
        "validation macro AUC by weight": val_auc,
        "zero_shot_weight": weight,
        "bootstrap": args.bootstrap,
    }
    paths = write_results(rows, prefix, systems, title="Zero-shot blend, test split", meta=meta)
    paths["curve"] = weight_curve(
        val_brier,
        weight,
        Path(prefix).with_name(Path(prefix).name + "_weight.png"),
        title="Choosing the blend weight (validation)",
        ylabel="Brier score (lower is better)",
    )
    saved = write_blend_weight(
        index_dir,
        weight,
        encoder.fingerprint(),
        chosen_on="val",
        validation_brier={str(w): value for w, value in val_brier.items()},
        k=args.k,
        target=args.target,
    )
    print(paths["md"].read_text())
    print(f"saved the weight {weight:g} to {saved}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
