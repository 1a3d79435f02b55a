"""Report writers by name: `offline` (the default, prose from the retrieved studies' sentences),
`readout` (each finding as a probability), and the LLM writers `gemini` and
`openai-compatible` (a local LLM behind an OpenAI-compatible server)."""

from __future__ import annotations

import inspect

from medxpert.config import WRITERS, Settings
from medxpert.errors import ConfigError
from medxpert.report.gemini import GeminiWriter
from medxpert.report.offline import OfflineWriter
from medxpert.report.openai_compatible import OpenAICompatibleWriter
from medxpert.report.readout import ReadoutWriter

OFFLINE_WRITERS = ("offline", "readout")
LLM_WRITERS: dict[str, type[GeminiWriter | OpenAICompatibleWriter]] = {
    "gemini": GeminiWriter,
    "openai-compatible": OpenAICompatibleWriter,
}


def make_writer(
    name: str, **options: object
) -> OfflineWriter | ReadoutWriter | GeminiWriter | OpenAICompatibleWriter:
    """The writer called `name`; `options` go to its constructor (e.g. the LLM's `model`,
    the local server's `url`, `send_image=True`)."""
    if name in OFFLINE_WRITERS:
        if options:
            raise ConfigError(
                f"the {name} writer takes no options ({', '.join(options)}): they are for the "
                "LLM writers (--writer gemini or --writer openai-compatible)."
            )
        return OfflineWriter() if name == "offline" else ReadoutWriter()
    if name not in LLM_WRITERS:
        raise ConfigError(f"unknown report writer {name!r}; available: {', '.join(WRITERS)}.")
    writer = LLM_WRITERS[name]
    accepted = inspect.signature(writer).parameters
    unknown = [option for option in options if option not in accepted]
    if unknown:
        raise ConfigError(
            f"the {name} writer takes no option {', '.join(unknown)}; it takes "
            f"{', '.join(accepted)}."
        )
    return writer(**options)


def writer_options(name: str, settings: Settings, **given: object) -> dict:
    """The options of writer `name`: those `given` that are set (not None or False), over the
    settings' LLM model and local server (MEDXPERT_LLM_MODEL, MEDXPERT_LLM_URL) for an LLM
    writer."""
    options: dict = {}
    if name in LLM_WRITERS:
        options["model"] = settings.llm_model
    if name == "openai-compatible":
        options["url"] = settings.llm_url
    options.update({k: v for k, v in given.items() if v is not None and v is not False})
    return {k: v for k, v in options.items() if v is not None}
