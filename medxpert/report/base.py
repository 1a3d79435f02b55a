"""What a report writer is: `Writer`."""

from __future__ import annotations

from typing import Protocol

from medxpert.report.context import ReportContext
from medxpert.report.schema import StructuredReport


class Writer(Protocol):
    """Turns the evidence of one query into a `StructuredReport`."""

    name: str  # its registry name, recorded in every report
    model: str | None  # the LLM it calls (None: an offline writer)
    send_image: bool  # whether it sends the query image out (only when the user opted in)

    def write(self, context: ReportContext) -> StructuredReport: ...
