"""Settings: where data and artifacts live, which device and backends to use.

Every field can be overridden with a `MEDXPERT_<FIELD>` environment variable, e.g.
`MEDXPERT_DATA_DIR=/data/cxr` or `MEDXPERT_TOP_K=20`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medxpert.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    """The checkout MedXpert runs from (the folder holding pyproject.toml), else the CWD."""
    checkout = PACKAGE_DIR.parent
    return checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()


DEVICES = ("auto", "cpu", "cuda")
# The writer and captioner names (the registries in medxpert.report / medxpert.caption build
# them): named here, at the bottom of the flow, so that settings can check them.
WRITERS = ("offline", "readout", "gemini", "openai-compatible")
CAPTIONERS = ("labels", "blip")


@dataclass(frozen=True)
class Settings:
    """Paths, model names and limits; build with `Settings.from_env()`."""

    data_dir: Path | None = None
    models_dir: Path = field(default_factory=lambda: project_root() / "models")
    indexes_dir: Path = field(default_factory=lambda: project_root() / "indexes")
    results_dir: Path = field(default_factory=lambda: project_root() / "results")
    cache_dir: Path = field(default_factory=lambda: project_root() / ".cache")
    device: str = "auto"
    top_k: int = 10
    encoder: str = "medxpert-default"
    captioner: str = "labels"
    writer: str = "offline"
    llm_url: str | None = (
        None  # the openai-compatible writer's server, e.g. http://127.0.0.1:11434/v1
    )
    llm_model: str | None = None  # the LLM writers' model (default: the writer's own)
    max_image_pixels: int = 64_000_000
    max_image_mb: int = 100

    def __post_init__(self) -> None:
        for name, allowed in (
            ("device", DEVICES),
            ("writer", WRITERS),
            ("captioner", CAPTIONERS),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(
                    f"{name}={value!r} is not valid; choose one of {', '.join(allowed)} "
                    f"(environment variable MEDXPERT_{name.upper()})."
                )
        for name in ("top_k", "max_image_pixels", "max_image_mb"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Defaults, then `MEDXPERT_*` variables from `environ`, then explicit `overrides`."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for spec in dataclasses.fields(cls):
            raw = environ.get(f"MEDXPERT_{spec.name.upper()}")
            if raw is None or raw == "":
                continue
            values[spec.name] = _parse(spec.name, spec.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def max_image_bytes(self) -> int:
        return self.max_image_mb * 1024 * 1024

    def library_path(self, name: str | Path | None = None) -> Path:
        """A case library's folder: a path as given, a bare name under `indexes_dir` (default:
        the `encoder` setting's name, the library `medxpert index build` makes)."""
        if name is None:
            return self.indexes_dir / self.encoder
        path = Path(name).expanduser()
        return path if path.is_dir() or len(path.parts) > 1 else self.indexes_dir / path

    def data_dir_candidates(self) -> list[Path]:
        """Where data packs are looked for, in order: MEDXPERT_DATA_DIR, ./data, ../shared/data."""
        root = project_root()
        candidates = [root / "data", root.parent / "shared" / "data"]
        if self.data_dir is not None:
            candidates.insert(0, Path(self.data_dir).expanduser())
        unique: list[Path] = []
        for path in candidates:
            if path.resolve() not in [p.resolve() for p in unique]:
                unique.append(path)
        return unique


def _parse(name: str, type_name: object, raw: str) -> object:
    type_text = str(type_name)
    if "Path" in type_text:
        return Path(raw).expanduser()
    if type_text == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"MEDXPERT_{name.upper()}={raw!r} is not an integer.") from None
    return raw.strip()


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False
