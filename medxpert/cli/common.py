"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
import random
import re
from collections.abc import Sequence
from pathlib import Path

from medxpert.data import Case, load_cases

SHARED_SOURCES = ("nih_cxr14", "iu_xray", "covid_cxr")
# medxpert.retrieval.FUSION_METHODS and TARGETS, spelt out so that --help need not import torch
FUSION_CHOICES = ("rrf", "calibrated", "rank", "max-cosine")
TARGET_CHOICES = ("reports", "images", "both")


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        action="append",
        default=None,
        help=f"data source (repeatable; default: {' '.join(SHARED_SOURCES)})",
    )


def load_sources(sources: Sequence[str] | None, split: str) -> list[Case]:
    """The cases of every source for `split` (the shared packs when none are named)."""
    return [case for source in (sources or SHARED_SOURCES) for case in load_cases(source, split)]


def add_listen_arguments(parser: argparse.ArgumentParser, port: int) -> None:
    """--host (default 127.0.0.1: this machine only) and --port (default `port`)."""
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=port, help=f"port (default: {port})")


def add_artifact_arguments(parser: argparse.ArgumentParser) -> None:
    """--model and --index (default: the MEDXPERT_ENCODER ones under models/ and indexes/)."""
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model folder or name (default: the one the library records)",
    )
    parser.add_argument(
        "--index", default=None, help="library name or folder (default: indexes/<MEDXPERT_ENCODER>)"
    )


def load_pipeline(args: argparse.Namespace, **options: object):
    """The pipeline of `--index` (and `--model`) with `options`, and the library's folder."""
    from medxpert.config import Settings
    from medxpert.index.library import library_artifacts
    from medxpert.pipeline import DiagnosisPipeline

    settings = Settings.from_env()
    model_dir, index_dir = library_artifacts(args.index, args.model, settings)
    pipeline = DiagnosisPipeline.from_artifacts(
        model_dir, index_dir, device=settings.device, **options
    )
    return pipeline, index_dir


def add_fusion_argument(parser: argparse.ArgumentParser) -> None:
    """--fusion: how `--target both` puts the two indexes on one scale."""
    parser.add_argument(
        "--fusion",
        choices=FUSION_CHOICES,
        default=None,
        help="how --target both fuses reports and images (default: the choice `medxpert eval "
        "fusion` saved next to the index, else rrf)",
    )


def add_writer_arguments(parser: argparse.ArgumentParser) -> None:
    """--writer, and --llm-url and --llm-model: the LLM writers' server and model."""
    parser.add_argument(
        "--writer",
        default=None,
        help="report writer: offline (default), readout, gemini (needs GEMINI_API_KEY; sends "
        "de-identified text only) or openai-compatible (a local LLM server: --llm-url)",
    )
    parser.add_argument(
        "--llm-url",
        default=None,
        metavar="URL",
        help="the openai-compatible writer's server, e.g. http://127.0.0.1:11434/v1 (Ollama) "
        "(default: MEDXPERT_LLM_URL)",
    )
    parser.add_argument(
        "--llm-model",
        default=None,
        help="the LLM writer's model: a Gemini model (default gemini-2.5-flash) or the local "
        "server's (e.g. llama3.1; default: the first it serves) (default: MEDXPERT_LLM_MODEL)",
    )


def add_sample_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--sample",
        type=int,
        default=0,
        metavar="N",
        help=f"{what} N random test-split images of the shared sources",
    )
    parser.add_argument("--seed", type=int, default=0, help="for --sample")


def sample_test_images(n: int, seed: int) -> list[Case]:
    """`n` random test-split cases with an image, from the shared sources."""
    test = [case for case in load_sources(None, "test") if case.has_image]
    return random.Random(seed).sample(test, min(n, len(test))) if n else []


def add_output_arguments(parser: argparse.ArgumentParser, name: str, *, bootstrap: bool = True):
    """--bootstrap (resamples of the 95% intervals) and --out (default: results/`name`)."""
    if bootstrap:
        parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"output prefix (default: results/{name})"
    )
    parser.set_defaults(out_name=name)


def output_prefix(args: argparse.Namespace) -> Path:
    """Where an evaluation writes its files: --out, else results/<its name>."""
    from medxpert.config import Settings

    return args.out or Settings.from_env().results_dir / args.out_name


def present_results(paths: dict[str, Path], *notes: str) -> None:
    """Show an evaluation's Markdown table, `notes`, and every file it wrote."""
    if "md" in paths:
        print(paths["md"].read_text())
    for note in notes:
        print(note)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def slug(text: str, length: int = 50) -> str:
    """A file-name-safe form of `text`."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text)[:length].strip("_") or "query"
