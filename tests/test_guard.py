"""The input guard: DICOM header, pixels and embedding checks, and the pipeline's refusals."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medxpert.data import load_cases, open_image
from medxpert.errors import IndexFormatError, InputRefusedError
from medxpert.guard import (
    InputGuard,
    fit_embedding_guard,
    read_embedding_guard,
    write_embedding_guard,
)
from medxpert.guard.header import header_problems
from medxpert.guard.pixels import pixel_problems
from medxpert.pipeline import DiagnosisPipeline
from tests.builders import (
    dicom_bytes,
    gradient,
    png_bytes,
    tiny_pipeline,
)

NOT_RADIOGRAPHS = {
    "CT_small.dcm": "Modality CT",
    "MR_small.dcm": "Modality MR",
    "rtdose.dcm": "Modality RTDOSE",
    "liver_1frame.dcm": "Modality SEG",
    "examples_palette.dcm": "Modality US",
    "examples_overlay.dcm": "Modality MR",
}


def _dicom(modality: str = "DX", **tags: str) -> bytes:
    """A 192×160 DICOM radiograph with `modality` and extra `tags`."""
    dataset = pydicom.dcmread(io.BytesIO(dicom_bytes(gradient(dtype=np.uint16) * 16)))
    dataset.Modality = modality
    for keyword, value in tags.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "says"), sorted(NOT_RADIOGRAPHS.items()))
def test_the_header_refuses_real_dicom_files_that_are_not_radiographs(name, says):
    problems = InputGuard().image_problems(open_image(get_testdata_file(name)))
    assert any(says in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("modality", "tags", "refused"),
    [
        ("DX", {"BodyPartExamined": "CHEST"}, False),
        ("CR", {"BodyPartExamined": "THORAX", "ViewPosition": "PA"}, False),
        ("DX", {}, False),
        ("OT", {}, False),  # a secondary capture: the pixels and the embedding decide
        ("DX", {"BodyPartExamined": "HAND"}, True),
        ("MG", {"BodyPartExamined": "BREAST"}, True),
        ("CT", {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, True),
    ],
)
def test_the_header_reads_modality_body_part_and_image_type(modality, tags, refused):
    image = open_image(_dicom(modality, **tags))
    assert bool(InputGuard().image_problems(image)) is refused


def test_images_without_a_header_have_no_header_problems():
    assert header_problems(None) == []


def _rgba_png(rgba: tuple[int, int, int, int], size=(256, 256)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", size, rgba).save(buffer, format="PNG")
    return buffer.getvalue()


def _colour_photo() -> bytes:
    """Red, green and blue bands with texture: a colourful picture of X-ray size."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 60, size=(240, 240, 3)).astype(np.uint8)
    for band, channel in enumerate((0, 1, 2)):
        pixels[band * 80 : (band + 1) * 80, :, channel] += 180
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (_rgba_png((0, 0, 0, 0)), "flat"),  # fully transparent
        (png_bytes(np.full((256, 256), 3000, np.uint16)), "flat"),  # constant 16-bit
        (png_bytes(np.full((256, 256), 128, np.uint8)), "flat"),
        (png_bytes(gradient(64, 64)), "under the 128-pixel minimum"),
        (png_bytes(gradient(150, 600)), "shape is 4.0:1"),
        (_colour_photo(), "colour picture"),
    ],
)
def test_the_pixels_refuse_flat_tiny_elongated_and_colour_images(data, says):
    problems = pixel_problems(open_image(data))
    assert any(says in problem for problem in problems), problems


def test_real_chest_xrays_of_every_pack_pass_the_pixel_checks(shared_pack):
    for source in ("iu_xray", "nih_cxr14", "covid_cxr"):
        shared_pack(source)
        cases = [case for case in load_cases(source, "test") if case.has_image][:40]
        flagged = {c.image_path: pixel_problems(open_image(c.image_path)) for c in cases}
        assert cases and not any(flagged.values()), {k: v for k, v in flagged.items() if v}


def _cloud(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    """Unit vectors of a narrow cone, as fine-tuned X-ray embeddings are."""
    scales = np.linspace(1.0, 0.02, dim)
    vectors = np.eye(dim)[0] * 4 + rng.normal(size=(n, dim)) * scales
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_the_embedding_guard_refuses_what_lies_off_the_library_distribution(tmp_path):
    rng = np.random.default_rng(0)
    train, val, test = _cloud(rng, 2000), _cloud(rng, 1000), _cloud(rng, 1000)
    guard = fit_embedding_guard(train, val, "fp", quantile=0.99)
    assert np.mean(guard.distances(val) > guard.threshold) == pytest.approx(0.01, abs=0.002)
    assert np.mean([bool(p) for p in guard.problems(test)]) < 0.03
    # Off the cone along a direction in which the library barely varies: as close as the
    # library by cosine to its mean direction, but far by Mahalanobis distance.
    outlier = np.eye(16)[0] * 4 + np.eye(16)[15] * 0.5
    outlier /= np.linalg.norm(outlier)
    assert float(outlier @ train.mean(0) / np.linalg.norm(train.mean(0))) > 0.99
    assert (
        guard.problems(outlier[None])[0]
        and "far from every chest X-ray" in (guard.problems(outlier[None])[0][0])
    )

    path = write_embedding_guard(tmp_path, guard)
    loaded = read_embedding_guard(tmp_path, "fp")
    assert loaded is not None and loaded.threshold == pytest.approx(guard.threshold)
    np.testing.assert_allclose(loaded.distances(test), guard.distances(test))
    assert read_embedding_guard(tmp_path, "another encoder") is None
    assert read_embedding_guard(tmp_path / "nothing", "fp") is None
    path.write_bytes(b"not a guard")
    with pytest.raises(IndexFormatError, match="medxpert eval guard"):
        read_embedding_guard(tmp_path, "fp")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Every library image is labelled Edema: the vote alone triages any image as urgent."""
    return tiny_pipeline(tmp_path_factory.mktemp("guarded"))


def test_the_pipeline_refuses_a_ct_slice_and_force_diagnoses_it_with_a_warning(pipeline):
    ct = Path(get_testdata_file("CT_small.dcm"))
    with pytest.raises(
        InputRefusedError, match=r"CT_small\.dcm: its DICOM header says Modality CT"
    ):
        pipeline.diagnose(image=ct)
    with pytest.raises(InputRefusedError, match="--force"):
        pipeline.diagnose(images=[png_bytes(gradient()), ct.read_bytes()])

    chest = pipeline.diagnose(image=png_bytes(gradient(low=20, high=160)))
    assert chest.report.triage.level != "routine" and not chest.report.warnings

    forced = pipeline.diagnose(image=ct, force=True)
    assert forced.report.triage.level == "routine"
    assert "capped at routine" in forced.report.triage.reason
    assert any("Modality CT" in w and "forced" in w for w in forced.report.warnings)
    assert "Modality CT" in forced.report.to_markdown()


def test_text_queries_are_not_guarded(pipeline):
    diagnosis = pipeline.diagnose(text="level two pleural effusion.", target="reports", k=3)
    assert "guard" not in diagnosis.timings_ms and not diagnosis.report.warnings


def test_a_saved_guard_refuses_images_far_from_the_library(pipeline, tmp_path):
    """The library's images are left-to-right ramps; a top-to-bottom ramp is as close to them
    by cosine (the tiny encoder maps every image near one direction) but far by distance."""
    library, encoder = pipeline.engine.library, pipeline.engine.encoder
    vectors, _ = library.image_vectors()
    rng = np.random.default_rng(1)
    jittered = vectors[rng.integers(0, len(vectors), 400)] + rng.normal(0, 1e-3, (400, 16))
    fingerprint = encoder.fingerprint()
    write_embedding_guard(
        tmp_path, fit_embedding_guard(jittered[:200], jittered[200:], fingerprint)
    )
    guarded = DiagnosisPipeline(
        pipeline.engine,
        pipeline.captioner,
        pipeline.writer,
        k=5,
        guard=InputGuard.for_library(library, tmp_path, fingerprint),
    )
    vertical = png_bytes(np.ascontiguousarray(gradient(192, 160).T))
    assert float((encoder.encode_images([vertical]) @ vectors.T).max()) > 0.999
    with pytest.raises(InputRefusedError, match="embedding lies far"):
        guarded.diagnose(image=vertical)
    assert not guarded.diagnose(image=library.cases[0].image_path).report.warnings
