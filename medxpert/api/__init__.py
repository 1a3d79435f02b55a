"""The REST API (`medxpert serve`): FastAPI routes around `DiagnosisPipeline`. See docs/api.md.

`create_app` loads lazily: `medxpert serve`'s parent process imports only the runner, and each
worker loads the app (and with it the pipeline, PyTorch and FAISS).
"""

from medxpert.api.keys import API_KEY_HEADER, API_KEY_VARIABLE
from medxpert.api.server import check_exposure, serve

__all__ = ["API_KEY_HEADER", "API_KEY_VARIABLE", "check_exposure", "create_app", "serve"]


def __getattr__(name: str):
    if name == "create_app":
        from medxpert.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
