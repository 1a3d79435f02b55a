"""Heatmaps (medxpert.explain): shapes and files, and the sanity checks of Adebayo et al.
("Sanity Checks for Saliency Maps", NeurIPS 2018) on real open_clip towers.

The checks compare maps by Spearman rank correlation, as Adebayo et al. do. A map that ignored
the weights, or the image, would correlate near 1 with its original; maps of unrelated models
or images correlate near 0. The bound 0.5 sits halfway: what is left below it is at most a
weak agreement, e.g. the chest's outline that any model's activations follow.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from medxpert.caption import LabelCaptioner
from medxpert.encoders import DualEncoder
from medxpert.explain import Explainer, overlay, png_bytes, write_heatmaps
from tests.builders import TINY_VISION, gradient, tiny_encoder, tiny_pipeline, tiny_text_tower

BOUND = 0.5  # Spearman below which two maps count as different
FLAT = 1e-6  # max − min of a blank image's map


@pytest.fixture(scope="module")
def xrays(shared_pack):
    """Six real frontal X-rays of the IU test split (three query–retrieved pairs), of one size
    (256 × 256)."""
    pack = shared_pack("iu_xray")
    rows = pd.read_csv(pack / "reports.csv", dtype=str, keep_default_na=False)
    rows = rows[(rows["split"] == "test") & (rows["view"] == "frontal")]
    rows = rows[(rows["width"] == "256") & (rows["height"] == "256")]
    return [Image.open(pack / path).convert("L") for path in rows["image_path"][:6]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """`tiny_encoder` at 160 px: a 5 × 5 feature map (at its 64 px, 2 × 2 is too coarse for
    rank statistics)."""
    torch.manual_seed(0)
    base = tiny_encoder(tmp_path_factory.mktemp("tiny"))
    return DualEncoder.create(
        "medxpert-default",
        pretrained=False,
        text_tower=tiny_text_tower(tmp_path_factory.mktemp("tower")),
        device="cpu",
        embed_dim=16,
        vision_cfg={**TINY_VISION, "image_size": 160},
        text_cfg=base.model_cfg["text_cfg"],
    )


@pytest.fixture(scope="module")
def default():
    """The real offline default: EfficientNet-Lite0 with its ImageNet weights."""
    torch.manual_seed(0)
    return DualEncoder.create("medxpert-default", device="cpu")


def randomised(encoder: DualEncoder, seed: int = 1) -> DualEncoder:
    """A copy whose whole image tower is re-initialised (each module's own initialiser)."""
    copied = copy.deepcopy(encoder)
    torch.manual_seed(seed)
    for module in copied.model.visual.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()
    return copied


def rho(a: np.ndarray, b: np.ndarray) -> float:
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def median_rho(maps: dict, others: dict) -> float:
    return float(np.nanmedian([rho(maps[label], others[label]) for label in maps]))


# --- maps, overlays and files ------------------------------------------------------------------
def test_maps_have_the_image_size_and_range(tmp_path):
    encoder = tiny_encoder(tmp_path)
    explainer = Explainer(encoder, LabelCaptioner(encoder))
    picture = Image.fromarray(gradient(120, 200))
    maps = explainer.finding_maps(picture)
    assert set(maps) == set(explainer.findings) and "Edema" in maps
    query, retrieved = explainer.similarity_maps(picture, Image.fromarray(gradient(90, 70)))
    assert query.shape == (120, 200) and retrieved.shape == (90, 70)
    for heatmap in [*maps.values(), query, retrieved]:
        assert heatmap.dtype == np.float32 and heatmap.shape[0] > 1
        assert heatmap.min() >= 0 and heatmap.max() <= 1
    assert list(explainer.finding_maps(picture, ["Edema"])) == ["Edema"]
    with pytest.raises(Exception, match="no heatmap for Nonsense"):
        explainer.finding_maps(picture, ["Nonsense"])


def test_the_encoder_state_is_left_as_it_was(tmp_path):
    """Under a caller's inference mode, with a module in train mode: maps come, and every
    weight stays frozen and every module keeps its mode."""
    encoder = tiny_encoder(tmp_path)
    explainer = Explainer(encoder, LabelCaptioner(encoder))
    encoder.model.visual.head.train()
    with torch.inference_mode():
        assert explainer.finding_maps(Image.fromarray(gradient()), ["Edema"])["Edema"].max() == 1
    assert not any(p.requires_grad for p in encoder.model.parameters())
    assert encoder.model.visual.head.training and not encoder.model.visual.trunk.training


def test_overlay_is_rgb_at_the_image_size(tmp_path):
    picture = Image.fromarray(gradient(120, 200))
    heatmap = np.linspace(0, 1, 120 * 200, dtype=np.float32).reshape(120, 200)
    rendered = overlay(picture, heatmap)
    assert rendered.mode == "RGB" and rendered.size == (200, 120)
    assert overlay(picture, np.zeros((4, 4))).tobytes() == picture.convert("RGB").tobytes()
    assert png_bytes(rendered).startswith(b"\x89PNG")


def test_write_heatmaps(tmp_path, xrays):
    pipeline = tiny_pipeline(tmp_path)
    diagnosis = pipeline.diagnose(image=xrays[0], force=True)
    paths = write_heatmaps(pipeline, diagnosis, [xrays[0]], tmp_path / "maps")
    probabilities = diagnosis.caption.probabilities
    likely = [label for label, p in probabilities.items() if p >= pipeline.captioner.threshold]
    top = sorted(probabilities, key=probabilities.get, reverse=True)
    findings = {f"finding-{label.lower().replace(' ', '-')}.png" for label in likely or top[:3]}
    ranks = [hit.rank for hit in diagnosis.hits if hit.images][:5]
    similar = {f"similar-{rank}-{side}.png" for rank in ranks for side in ("query", "retrieved")}
    assert ranks and sorted(path.name for path in paths) == sorted(findings | similar)
    assert all(path.is_file() and Image.open(path).mode == "RGB" for path in paths)
    assert Image.open(tmp_path / "maps" / f"similar-{ranks[0]}-query.png").size == xrays[0].size


# --- sanity checks (Adebayo et al. 2018) -------------------------------------------------------
def test_blank_images_give_flat_maps(tiny, xrays):
    """A constant image equals its baseline (its blur), so every attribution is exactly zero;
    non-square, so the preprocessing's black padding makes the model's input non-constant."""
    explainer = Explainer(tiny, LabelCaptioner(tiny))
    for value in (0, 123, 255):
        blank = Image.new("L", (200, 160), value)
        maps = [
            *explainer.finding_maps(blank).values(),
            explainer.similarity_maps(blank, xrays[0])[0],
        ]
        assert spread(maps) < FLAT


def test_model_randomisation_changes_the_maps(tiny, xrays):
    assert max(randomisation_correlations(tiny, xrays)) < BOUND


def test_the_maps_follow_the_image(tiny, xrays):
    assert_maps_follow_the_image(Explainer(tiny, LabelCaptioner(tiny)), xrays[0])


def test_sanity_checks_on_the_default_tower(default, xrays):
    """The real default architecture and ImageNet weights: right size, flat on a blank image,
    decorrelated by randomising the tower, following the image, other for another X-ray."""
    explainer = Explainer(default, LabelCaptioner(default))
    assert explainer.split.layer.startswith("last feature map")
    maps = explainer.finding_maps(xrays[0])
    assert all(heatmap.shape == (256, 256) for heatmap in maps.values())
    assert spread(explainer.finding_maps(Image.new("L", (256, 200), 90)).values()) < FLAT
    assert max(randomisation_correlations(default, xrays)) < BOUND
    assert_maps_follow_the_image(explainer, xrays[0])
    assert median_rho(maps, explainer.finding_maps(xrays[1])) < BOUND


def randomisation_correlations(encoder: DualEncoder, xrays: list[Image.Image]) -> list[float]:
    """Spearman of the maps before and after re-initialising the tower, each a median over the
    pairs of X-rays (one pair's maps, 7 × 7 cells upsampled, vary too much to judge alone):
    finding maps, similarity maps over the query, over the retrieved image."""
    captioner = LabelCaptioner(encoder)
    before, after = Explainer(encoder, captioner), Explainer(randomised(encoder), captioner)
    rows = []
    for query, other in zip(xrays[::2], xrays[1::2], strict=True):
        pairs = zip(
            before.similarity_maps(query, other), after.similarity_maps(query, other), strict=True
        )
        finding = median_rho(before.finding_maps(query), after.finding_maps(query))
        rows.append([finding, *(rho(a, b) for a, b in pairs)])
    return list(np.median(rows, axis=0))


def assert_maps_follow_the_image(explainer: Explainer, xray: Image.Image) -> None:
    """Turned upside down, the X-ray's maps change (input change), and into maps nearer the
    original maps turned upside down than the original maps."""
    maps = explainer.finding_maps(xray)
    turned = explainer.finding_maps(xray.rotate(180))
    assert median_rho(maps, turned) < BOUND
    followed = {label: np.rot90(heatmap, 2) for label, heatmap in maps.items()}
    assert median_rho(followed, turned) > median_rho(maps, turned)


def spread(maps) -> float:
    return max(float(heatmap.max() - heatmap.min()) for heatmap in maps)
