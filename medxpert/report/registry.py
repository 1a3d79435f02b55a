"""Report writers by name: `offline` (the default) and `gemini`."""

from __future__ import annotations

from medxpert.errors import ConfigError
from medxpert.report.gemini import GeminiWriter
from medxpert.report.offline import OfflineWriter

WRITERS = ("offline", "gemini")


def make_writer(name: str, **options: object) -> OfflineWriter | GeminiWriter:
    """The writer called `name`; `options` go to its constructor (e.g. the Gemini model,
    `send_image=True`)."""
    if name == "offline":
        if options:
            raise ConfigError(
                f"the offline writer takes no options ({', '.join(options)}): they are for the "
                "gemini writer (--writer gemini)."
            )
        return OfflineWriter()
    if name == "gemini":
        return GeminiWriter(**options)
    raise ConfigError(f"unknown report writer {name!r}; available: {', '.join(WRITERS)}.")
