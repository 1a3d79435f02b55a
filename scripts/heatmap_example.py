"""A heatmap figure (docs/images/heatmap.png): an IU X-ray test image, the map of its most
probable finding, and the similarity maps of its best retrieved image, from real artifacts.

    python scripts/heatmap_example.py [--case iu_xray:...] [--out results/heatmaps/example.png]
        [--models /work/fresh3/models/medxpert-default]
        [--index /work/fresh3/indexes/medxpert-default]

Only reads the model and library; prints how long each map took.
"""

import argparse
import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so that `medxpert` imports from the checkout

from medxpert.atomic import atomic_write_bytes  # noqa: E402
from medxpert.config import Settings  # noqa: E402
from medxpert.data import load_cases  # noqa: E402
from medxpert.data.images import open_image  # noqa: E402
from medxpert.explain import Explainer, overlay  # noqa: E402
from medxpert.pipeline import DiagnosisPipeline  # noqa: E402

ARTIFACTS = Path("/work/fresh3")
DEFAULT_CASE = "iu_xray:CXR267_IM-1147-1001"  # "mild patchy bilateral airspace disease"
REPEATS = 5  # timings: the median of this many runs, after one warm-up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default=DEFAULT_CASE, help=f"IU X-ray test case ({DEFAULT_CASE})")
    parser.add_argument("--models", type=Path, default=ARTIFACTS / "models/medxpert-default")
    parser.add_argument("--index", type=Path, default=ARTIFACTS / "indexes/medxpert-default")
    parser.add_argument("--out", type=Path, default=ROOT / "results/heatmaps/example.png")
    args = parser.parse_args()
    case = pick_case(args.case)
    pipeline = DiagnosisPipeline.from_artifacts(args.models, args.index, device="cpu")
    picture = open_image(case.image_path)
    diagnosis = pipeline.diagnose(image=picture, force=True)
    explainer = Explainer(pipeline.engine.encoder, pipeline.captioner)
    probabilities = diagnosis.caption.probabilities
    finding = max(probabilities, key=probabilities.get)
    hit = next(hit for hit in diagnosis.hits if hit.images)
    retrieved = open_image(hit.images[0].image_path)
    query = explainer.features(picture)
    finding_map = explainer.finding_maps(query, [finding])[finding]
    similarity = explainer.similarity_maps(query, retrieved)
    print(f"{case.case_id}: {diagnosis.caption.text}")
    print(f"layer: {explainer.split.layer}; timings (median of {REPEATS}, CPU):")
    report_timings(explainer, picture, retrieved)
    panels = [
        (picture.convert("RGB"), f"query {case.case_id}"),
        (overlay(picture, finding_map), f"{finding} (p = {probabilities[finding]:.2f})"),
        (overlay(picture, similarity[0]), f"query, by similarity to hit #{hit.rank}"),
        (overlay(retrieved, similarity[1]), f"hit #{hit.rank} {hit.images[0].case_id}"),
    ]
    atomic_write_bytes(args.out, figure(panels))
    print(f"wrote {args.out}")
    return 0


def pick_case(case_id: str):
    cases = load_cases("iu_xray", "test", settings=Settings.from_env())
    return next(case for case in cases if case.case_id == case_id and case.has_image)


def report_timings(explainer: Explainer, picture, retrieved) -> None:
    findings = explainer.findings
    runs = {
        "features (1 forward: image + its blurred copy)": lambda: explainer.features(picture),
        f"{len(findings)} finding maps, features included": lambda: explainer.finding_maps(picture),
        "similarity pair (2 maps), features included": lambda: explainer.similarity_maps(
            picture, retrieved
        ),
    }
    for name, run in runs.items():
        print(f"  {name}: {median_ms(run):.0f} ms")


def median_ms(run) -> float:
    run()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[REPEATS // 2]


def figure(panels) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4))
    for axis, (image, title) in zip(axes, panels, strict=True):
        axis.imshow(image)
        axis.set_title(title, fontsize=10)
        axis.axis("off")
    fig.suptitle(
        "Integrated Gradients at the last feature map, from a blurred baseline", fontsize=11
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
