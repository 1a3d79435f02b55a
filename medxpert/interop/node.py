"""A DICOM node: receive studies the way a PACS sends them, diagnose each, answer with an SR.

    with DicomNode(pipeline, "node-out", port=11112, quiet_seconds=10) as node:
        ...  # storescu -aec MEDXPERT 127.0.0.1 11112 *.dcm

A C-STORE SCP (and C-ECHO) bound to 127.0.0.1 by default. It accepts the storage SOP classes of
radiographs (CR, DX for presentation and for processing) and Secondary Capture, in the usual
transfer syntaxes; the pipeline's input guard decides what is a chest X-ray. Every instance is
written atomically to ``<out>/incoming/<StudyInstanceUID>/<SOPInstanceUID>.dcm``. A study is
complete when no new instance of it arrived for `quiet_seconds`; a worker thread then diagnoses
its images (frontal views first) and writes ``<out>/reports/<StudyInstanceUID>.sr.dcm``,
optionally sent on by C-STORE to a `Destination`. A study that gets new instances after that is
diagnosed again, and its SR replaced by a new version. ``<out>/reports/<StudyInstanceUID>.json``
is the study's journal: instances received, state, SR or error. Studies received but not
diagnosed before a stop are diagnosed after the next start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medxpert.atomic import atomic_write_bytes, atomic_write_json
from medxpert.errors import ConfigError, InputRefusedError, MedXpertError

if TYPE_CHECKING:
    from pynetdicom.events import Event

    from medxpert.pipeline import DiagnosisPipeline

logger = logging.getLogger(__name__)

DEFAULT_AE_TITLE = "MEDXPERT"
DEFAULT_PORT = 11112
DEFAULT_QUIET_SECONDS = 10.0
# Computed Radiography, Digital X-Ray for presentation and for processing, Secondary Capture
STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.7",
)
# Uncompressed, deflated, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
)
FRONTAL_VIEWS = frozenset({"PA", "AP"})
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_SUCCESS, _CANNOT_UNDERSTAND, _OUT_OF_RESOURCES = 0x0000, 0xC000, 0xA700


@dataclass(frozen=True)
class Destination:
    """A C-STORE SCP the SRs are sent to (a PACS, a router)."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``HOST:PORT:AE``, e.g. ``127.0.0.1:4242:ORTHANC``."""
        host, port, ae_title = [*text.rsplit(":", 2), "", ""][:3]
        if not (host and port.isdigit() and 0 < int(port) < 65536 and 0 < len(ae_title) <= 16):
            raise ConfigError(f"{text!r} is not a destination HOST:PORT:AE (AE: 1-16 characters).")
        return cls(host, int(port), ae_title)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class DicomNode:
    """The C-STORE SCP, its study journal and the diagnosis worker (see the module)."""

    def __init__(
        self,
        pipeline: DiagnosisPipeline | Callable[[], DiagnosisPipeline],
        out_dir: str | Path,
        *,
        ae_title: str = DEFAULT_AE_TITLE,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        allowed_calling_aes: Iterable[str] | None = None,
        quiet_seconds: float = DEFAULT_QUIET_SECONDS,
        destination: Destination | None = None,
        force: bool = False,
    ) -> None:
        """`pipeline` or a function that loads it (called by `start`). `port` 0 takes a free
        one (`address` says which). `allowed_calling_aes` None accepts any calling AE title;
        `force` diagnoses images the input guard refuses (with the guard's warning)."""
        self._pipeline = pipeline
        self.out_dir = Path(out_dir)
        self.ae_title, self.host, self.port = ae_title, host, port
        self.allowed_calling_aes = sorted(set(allowed_calling_aes or ()))
        self.quiet_seconds, self.destination, self.force = quiet_seconds, destination, force
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: dict[str, float] = {}  # study UID → when its last new instance came
        self._stopping = threading.Event()
        self._server: Any = None
        self._worker: threading.Thread | None = None

    @property
    def incoming_dir(self) -> Path:
        return self.out_dir / "incoming"

    @property
    def reports_dir(self) -> Path:
        return self.out_dir / "reports"

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the node listens on (after `start`)."""
        return self._server.server_address[:2] if self._server else (self.host, self.port)

    def sr_path(self, study_uid: str) -> Path:
        return self.reports_dir / f"{study_uid}.sr.dcm"

    def journal_path(self, study_uid: str) -> Path:
        return self.reports_dir / f"{study_uid}.json"

    def start(self) -> DicomNode:
        """Load the pipeline, listen and start the worker; returns at once. A node starts once.
        A port that cannot be bound is a `ConfigError`."""
        if self._server is not None:
            return self
        if not hasattr(self._pipeline, "diagnose"):
            self._pipeline = self._pipeline()
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        self._recover()
        try:
            self._server = self._application_entity().start_server(
                (self.host, self.port), block=False, evt_handlers=self._handlers()
            )
        except OSError as error:
            raise ConfigError(f"cannot listen on {self.host}:{self.port}: {error}") from error
        self._worker = threading.Thread(target=self._work, name="medxpert-dicom-worker")
        self._worker.start()
        host, port = self.address
        logger.info(
            "DICOM node %s listening on %s:%d (calling AE titles: %s; a study is complete "
            "after %g s without a new instance); writing to %s",
            self.ae_title,
            host,
            port,
            ", ".join(self.allowed_calling_aes) or "any",
            self.quiet_seconds,
            self.out_dir,
        )
        return self

    def stop(self) -> None:
        """Stop listening, let the worker finish the study it is diagnosing, and return.
        Studies still waiting are diagnosed after the next start (of a new node)."""
        with self._changed:
            self._stopping.set()
            self._changed.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._worker is not None:
            self._worker.join()
            self._worker = None
            logger.info("DICOM node %s stopped", self.ae_title)

    def serve_forever(self) -> None:
        """Start and serve until `stop` (from another thread) or Ctrl-C (KeyboardInterrupt)."""
        try:
            self.start()
            while not self._stopping.wait(0.5):
                pass
        except KeyboardInterrupt:
            logger.info("DICOM node %s interrupted", self.ae_title)
        finally:
            self.stop()

    def __enter__(self) -> DicomNode:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- the network side (pynetdicom's association threads) ----

    def _application_entity(self) -> Any:
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(Verification)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        ae.require_calling_aet = self.allowed_calling_aes
        return ae

    def _handlers(self) -> list:
        from pynetdicom import evt

        return [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REJECTED, self._on_rejected),
        ]

    def _on_echo(self, event: Event) -> int:
        logger.info("C-ECHO from %s", _peer(event))
        return _SUCCESS

    def _on_rejected(self, event: Event) -> None:
        calling = event.assoc.requestor.ae_title
        if self.allowed_calling_aes and calling not in self.allowed_calling_aes:
            allowed = ", ".join(self.allowed_calling_aes)
            logger.warning(
                "rejected an association from %s: calling AE title %r is not allowed (allowed: %s)",
                _peer(event),
                calling,
                allowed,
            )
        else:
            logger.warning("rejected an association from %s", _peer(event))

    def _on_store(self, event: Event) -> int:
        """Write the instance under its study and (re)start the study's quiet period."""
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        try:
            study_uid = str(event.dataset.get("StudyInstanceUID", "") or "")
        except Exception as error:  # pydicom raises many kinds for a malformed dataset
            logger.warning("C-STORE from %s: unreadable dataset (%s)", _peer(event), error)
            return _CANNOT_UNDERSTAND
        if not (_UID.fullmatch(study_uid) and _UID.fullmatch(sop_uid)):
            logger.warning(
                "C-STORE from %s refused: StudyInstanceUID %r / SOPInstanceUID %r is not a UID",
                _peer(event),
                study_uid,
                sop_uid,
            )
            return _CANNOT_UNDERSTAND
        path = self.incoming_dir / study_uid / f"{sop_uid}.dcm"
        new = not path.exists()
        try:
            atomic_write_bytes(path, event.encoded_dataset())
        except OSError as error:
            logger.error("could not write %s: %s", path, error)
            return _OUT_OF_RESOURCES
        count = len(_instances(path.parent))
        logger.info(
            "received %s %s of study %s from %s (%d in the study)",
            event.dataset.get("Modality", "?"),
            sop_uid,
            study_uid,
            _peer(event),
            count,
        )
        with self._changed:
            queued = new or study_uid in self._pending
            if queued:
                self._pending[study_uid] = time.monotonic()
                self._changed.notify_all()
            else:
                logger.info(
                    "%s was received before: study %s not diagnosed again", sop_uid, study_uid
                )
            self._update_journal(
                study_uid, received=count, **({"state": "receiving"} if queued else {})
            )
        return _SUCCESS

    # ---- the worker ----

    def _recover(self) -> None:
        """Queue the studies whose instances on disk are not those last diagnosed."""
        for folder in sorted(path for path in self.incoming_dir.iterdir() if path.is_dir()):
            done = set(self._read_journal(folder.name).get("instances", ()))
            if {path.stem for path in _instances(folder)} != done:
                self._pending[folder.name] = time.monotonic()
                logger.info("study %s was received but not diagnosed: queued", folder.name)

    def _work(self) -> None:
        while (study_uid := self._next_study()) is not None:
            self._process(study_uid)

    def _next_study(self) -> str | None:
        """Wait for a study to be quiet for `quiet_seconds` (None when stopping)."""
        with self._changed:
            while not self._stopping.is_set():
                now = time.monotonic()
                due = {uid: last + self.quiet_seconds for uid, last in self._pending.items()}
                ready = [uid for uid, at in due.items() if at <= now]
                if ready:
                    del self._pending[ready[0]]
                    return ready[0]
                self._changed.wait(min(due.values(), default=now + 60) - now)
        return None

    def _process(self, study_uid: str) -> None:
        """Diagnose a study and write (and send) its SR; log and journal what stops it."""
        paths = frontal_first(_instances(self.incoming_dir / study_uid))
        instances = [path.stem for path in paths]
        with self._lock:
            previous = self._update_journal(study_uid, state="diagnosing", received=len(paths))
        logger.info("diagnosing study %s (%d images)", study_uid, len(paths))
        try:
            sr = self._write_sr(study_uid, paths)
        except InputRefusedError as error:
            logger.warning("study %s refused, no SR written: %s", study_uid, error)
            self._finish(study_uid, instances, state="refused", error=str(error))
        except MedXpertError as error:
            logger.warning("study %s not diagnosed, no SR written: %s", study_uid, error)
            self._finish(study_uid, instances, state="failed", error=str(error))
        except Exception as error:  # a bug in one study must not stop the node
            logger.exception("study %s not diagnosed, no SR written", study_uid)
            self._finish(study_uid, instances, state="failed", error=repr(error))
        else:
            version = previous.get("sr_version", 0) + 1
            logger.info("wrote %s (version %d) for study %s", sr, version, study_uid)
            sent = self._send(study_uid, sr, self.destination) if self.destination else {}
            self._finish(
                study_uid,
                instances,
                state="done",
                error=None,
                sr=str(sr),
                sr_version=version,
                **sent,
            )

    def _write_sr(self, study_uid: str, paths: list[Path]) -> Path:
        from medxpert.interop.sr import write_sr

        diagnosis = self._pipeline.diagnose(images=paths, force=self.force)
        return write_sr(diagnosis, self.sr_path(study_uid))  # its evidence names the images

    def _send(self, study_uid: str, sr: Path, destination: Destination) -> dict[str, Any]:
        """C-STORE the SR to `destination`: the journal's ``sent_to`` or ``send_error``."""
        try:
            send_file(sr, destination, calling_ae=self.ae_title)
        except OSError as error:
            logger.warning("study %s: SR not sent to %s: %s", study_uid, destination, error)
            return {"sent_to": None, "send_error": str(error)}
        logger.info("sent the SR of study %s to %s", study_uid, destination)
        return {"sent_to": str(destination), "send_error": None}

    def _finish(self, study_uid: str, instances: list[str], **fields: Any) -> None:
        """Journal a diagnosis' outcome; a study that got new instances meanwhile stays
        ``receiving`` (it is diagnosed again)."""
        with self._lock:
            if study_uid in self._pending:
                fields["state"] = "receiving"
            self._update_journal(study_uid, instances=instances, **fields)

    def _read_journal(self, study_uid: str) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            return json.loads(self.journal_path(study_uid).read_text(encoding="utf-8"))
        return {}

    def _update_journal(self, study_uid: str, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into the study's journal (call with the lock held); returns the
        journal as it was."""
        previous = self._read_journal(study_uid)
        record = {"study_instance_uid": study_uid, **previous, **fields}
        record["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            atomic_write_json(self.journal_path(study_uid), record)
        except OSError as error:
            logger.error("could not write the journal of study %s: %s", study_uid, error)
        return previous


def frontal_first(paths: Iterable[Path]) -> list[Path]:
    """The instances in the order the pipeline wants them: frontal views (ViewPosition PA or
    AP) first, then those without a view, then the others (lateral); each by series and
    instance number."""
    return sorted(paths, key=_view_order)


def send_file(path: Path, destination: Destination, *, calling_ae: str) -> None:
    """C-STORE a DICOM file to `destination`; `OSError` when it is not stored."""
    from pydicom import dcmread
    from pynetdicom import AE

    dataset = dcmread(path)
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise ConnectionError(f"no association with {destination}")
    try:
        status = assoc.send_c_store(dataset)
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code != _SUCCESS:
        raise OSError(f"{destination} answered C-STORE with status {code}")


def _view_order(path: Path) -> tuple:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    tags = ["ViewPosition", "SeriesNumber", "InstanceNumber"]
    try:
        header = dcmread(path, stop_before_pixels=True, specific_tags=tags)
    except (InvalidDicomError, OSError):
        return (1, 0, 0, path.name)
    view = str(header.get("ViewPosition", "") or "").upper()
    rank = 0 if view in FRONTAL_VIEWS else 1 if not view else 2
    return (rank, _number(header, "SeriesNumber"), _number(header, "InstanceNumber"), path.name)


def _number(header: Any, keyword: str) -> int:
    try:
        return int(header.get(keyword) or 0)
    except (TypeError, ValueError):
        return 0


def _instances(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def _peer(event: Event) -> str:
    remote = event.assoc.remote
    return f"{remote['ae_title']}@{remote['address']}:{remote['port']}"
