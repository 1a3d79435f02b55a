"""The REST API (`medxpert serve`): FastAPI routes around `DiagnosisPipeline`. See docs/api.md."""

from medxpert.api.app import API_KEY_HEADER, API_KEY_VARIABLE, create_app
from medxpert.api.server import check_exposure, serve

__all__ = ["API_KEY_HEADER", "API_KEY_VARIABLE", "check_exposure", "create_app", "serve"]
