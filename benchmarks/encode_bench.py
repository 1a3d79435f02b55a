"""Images per second of the offline default's image tower, side by side in one run.

    .venv/bin/python benchmarks/encode_bench.py [--images 256] [--sizes 224 192]

On the same real X-rays (IU X-ray test images, JPEG 256×256), at each input size:
- decode + preprocess only (PIL, the model's transform);
- the forward pass of the whole tower (no decode), batch 8 and 32: the forward-only rate;
- the frozen stages alone (stem + 5 stages, what the feature cache stores), batch 8 and 32;
- a training step, forward + backward, batch 32: the whole tower from pixels (the old
  recipe, frozen stages included) against the trainable stages from cached features;
- embedding end to end (`encode_images`, decode included): without the cache, with a cold
  cache (the frozen stages computed and written) and with a warm one (read back).
Writes results/encode_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from medxpert.atomic import atomic_write_json, atomic_write_text
from medxpert.config import Settings
from medxpert.data import load_cases, open_image
from medxpert.encoders import DualEncoder
from medxpert.encoders.staged import ImageStages

FROZEN_STAGES = 5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 192])
    parser.add_argument("--out", type=Path, default=None, help="default results/encode_bench")
    return parser.parse_args()


def rate(n: int, run) -> float:
    run()  # warm-up: kernels chosen, caches filled
    start = time.perf_counter()
    run()
    return n / (time.perf_counter() - start)


def batched(tensor: torch.Tensor, size: int):
    return [tensor[i : i + size] for i in range(0, len(tensor), size)]


def measure(size: int, paths: list[str]) -> dict[str, float]:
    torch.manual_seed(0)
    encoder = DualEncoder.create("medxpert-default", device="cpu")
    encoder.preprocess = {**encoder.preprocess, "size": size}
    model, transform = encoder.model, encoder.image_transform()
    stages = ImageStages(model.visual, FROZEN_STAGES)
    pixels = torch.stack([transform(open_image(p)) for p in paths])
    n = len(paths)
    figures: dict[str, float] = {}
    figures["decode + preprocess"] = rate(n, lambda: [transform(open_image(p)) for p in paths])
    with torch.inference_mode():
        for batch in (8, 32):
            figures[f"forward, whole tower, batch {batch}"] = rate(
                n, lambda b=batch: [model.visual(x) for x in batched(pixels, b)]
            )
            figures[f"forward, frozen stages, batch {batch}"] = rate(
                n, lambda b=batch: [stages.prefix(x) for x in batched(pixels, b)]
            )
        features = torch.cat([stages.prefix(x) for x in batched(pixels, 8)])
    features = features.clone()  # a normal tensor, usable with autograd
    for name, module in model.visual.named_parameters():
        module.requires_grad_(not name.startswith(stages.frozen_parameter_prefixes()))
    model.train()

    def step(run) -> None:
        for x in run:
            x.sum().backward()

    steps = min(n, 64)
    figures["training step from pixels, batch 32"] = rate(
        steps, lambda: step(model.visual(x) for x in batched(pixels[:steps], 32))
    )
    figures["training step from cached features, batch 32"] = rate(
        steps, lambda: step(stages.suffix(x) for x in batched(features[:steps], 32))
    )
    model.eval().requires_grad_(False)
    figures["encode_images, no cache"] = rate(n, lambda: encoder.encode_images(paths))
    with tempfile.TemporaryDirectory() as tmp:
        encoder.use_feature_cache(tmp, image_stages=FROZEN_STAGES)
        start = time.perf_counter()
        encoder.encode_images(paths)
        figures["encode_images, cold cache"] = n / (time.perf_counter() - start)
        encoder.use_feature_cache(tmp, image_stages=FROZEN_STAGES)
        figures["encode_images, warm cache"] = rate(n, lambda: encoder.encode_images(paths))
    return figures


def main() -> None:
    args = parse_args()
    settings = Settings.from_env()
    paths = [c.image_path for c in load_cases("iu_xray", "test") if c.has_image][: args.images]
    results = {size: measure(size, paths) for size in args.sizes}
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}",
        "images": len(paths),
        "images_per_second": results,
    }
    out = args.out or settings.results_dir / "encode_bench"
    atomic_write_json(out.with_suffix(".json"), record)
    sizes = list(results)
    lines = [
        f"Images/s, {len(paths)} IU X-ray test images, {record['machine']}",
        "",
        "| measure | " + " | ".join(f"{s} px" for s in sizes) + " |",
        "| --- | " + " | ".join("---:" for _ in sizes) + " |",
    ]
    for name in results[sizes[0]]:
        lines.append(f"| {name} | " + " | ".join(f"{results[s][name]:.1f}" for s in sizes) + " |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
