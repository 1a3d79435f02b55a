"""The structured report: schema, the evidence it is written from, and the writers."""

from medxpert.report.base import Writer
from medxpert.report.context import ReportContext
from medxpert.report.gemini import GeminiWriter
from medxpert.report.offline import OfflineWriter
from medxpert.report.openai_compatible import OpenAICompatibleWriter
from medxpert.report.readout import ReadoutWriter
from medxpert.report.registry import WRITERS, make_writer, writer_options
from medxpert.report.schema import DISCLAIMER, StructuredReport

__all__ = [
    "DISCLAIMER",
    "WRITERS",
    "GeminiWriter",
    "OfflineWriter",
    "OpenAICompatibleWriter",
    "ReadoutWriter",
    "ReportContext",
    "StructuredReport",
    "Writer",
    "make_writer",
    "writer_options",
]
