"""Schema fuzzing of the REST API with schemathesis: every route of the app, in-process, with
positive and negative data from its OpenAPI schema, and every check (status codes, content
types, response schemas, schema-valid data accepted, schema-invalid data refused, ...).

A schema cannot say "a chest X-ray": its `binary` parts are drawn from real test-split X-rays
(random bytes are refused with 400, which tests/test_api.py covers)."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import schemathesis
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st

from medxpert.api import create_app
from medxpert.config import Settings
from medxpert.data.locate import find_pack
from medxpert.errors import DataNotFoundError
from medxpert.pipeline import DiagnosisPipeline

EXAMPLES = 30  # per route and phase


def sample_xrays(count: int = 3) -> list[bytes]:
    """The first test-split X-rays of NIH CXR14 (the module is skipped without the pack)."""
    try:
        pack = find_pack("nih_cxr14", Settings.from_env())
    except DataNotFoundError as error:
        if os.environ.get("MEDXPERT_REQUIRE_DATA") == "1":
            raise
        pytest.skip(f"data pack nih_cxr14 not available: {error}", allow_module_level=True)
    table = pd.read_csv(pack / "labels.csv", dtype=str, keep_default_na=False)
    paths = table[(table["split"] == "test") & (table["image_path"] != "")]["image_path"]
    return [(pack / path).read_bytes() for path in paths.head(count)]


schemathesis.openapi.format("binary", st.sampled_from(sample_xrays()))
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())


@pytest.fixture(scope="module")
def app(tmp_path_factory, make_workspace):
    """The app around a pipeline on a tiny workspace (as in tests/test_api.py)."""
    root = tmp_path_factory.mktemp("fuzz")
    workspace = Settings.from_env(make_workspace(root))
    pipeline = DiagnosisPipeline.from_artifacts(
        workspace.models_dir / "medxpert-default",
        workspace.indexes_dir / "medxpert-default",
        k=5,
    )
    return create_app(pipeline, settings=workspace)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_every_route_keeps_to_its_schema(case, app):
    assume(representable(case))
    case.call_and_validate(app=app)


def representable(case) -> bool:
    """Whether the request can say what the case means. A form field generated as a list of
    none or one value (a negative case: "was boolean, became array") is sent as no field or as
    one: a valid request, which the server rightly accepts. Two values or more are sent as the
    field repeated, which it refuses."""
    if case.media_type != "multipart/form-data" or not isinstance(case.body, dict):
        return True
    return not any(
        isinstance(value, list) and len(value) < 2
        for name, value in case.body.items()
        if name != "image"
    )
