"""Embedding an archive on Ray Data: the engine behind `medxpert index build --engine ray`.

The cases to embed become a Ray Dataset of rows (case id and image path, or case id and report
text). Images are read and transformed in parallel Ray tasks; a pool of actors holds the
encoder (one model per actor, on a GPU when ``num_gpus_per_worker`` > 0) and embeds batches
with ``map_batches``. The driver streams the vectors back and writes them as Parquet shards
(case id, vector) under ``shards_dir``, each shard written atomically. The result is the
`Embeddings` that `embed_cases` returns, so both engines build the same library.

- **The model travels through Ray's object store**, so workers on other machines need only
  MedXpert installed, not the model folder. Each actor checks the encoder's fingerprint.
- **Images are read by the workers**, so their paths must be readable there: one shared file
  system (NFS, a cloud bucket mounted at the same path) on every node.
- **Fault tolerance is Ray's.** A killed actor is restarted (``max_restarts=-1``) and its lost
  batches are retried (``max_task_retries=-1``). The driver keeps one vector per case id, so
  the shards hold every case exactly once.
- **A rerun resumes.** Shards already written with the same encoder are read back, and only
  the cases they lack are embedded.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

import medxpert.errors
from medxpert.atomic import atomic_path
from medxpert.data import Case
from medxpert.data.case import TEXT_FIELDS
from medxpert.encoders import DualEncoder
from medxpert.errors import ConfigError, IndexFormatError, MedXpertError, ModelFormatError
from medxpert.index.library import Embeddings, check_unique_ids, rows_to_embed

logger = logging.getLogger(__name__)

FINGERPRINT_KEY = b"medxpert.encoder_fingerprint"
ROWS_PER_SHARD = 4096
# One input block per batch streams vectors back as they are made (and keeps a lost actor's
# retried work to one batch); past this many blocks, blocks grow instead.
MAX_BLOCKS = 10_000


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray job runs."""

    address: str | None = None  # None: start a local Ray runtime; "auto" or "HOST:PORT" (GCS)
    workers: int = 2  # actors, each holding one encoder
    num_gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    read_cpus: float = 0.25  # logical CPUs each image-reading task asks for
    batch_size: int = 8
    rows_per_shard: int = ROWS_PER_SHARD

    def __post_init__(self) -> None:
        if self.address and self.address.startswith("ray://"):
            raise ConfigError(
                "Ray Data does not run through Ray Client (ray://). Run the build on a node of "
                "the cluster with --address auto, or submit it as a Ray Job: ray job submit "
                "--address http://HEAD:8265 -- medxpert index build --engine ray --address "
                "auto (docs/index.md, 'Embedding on a Ray cluster')."
            )
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}.")
        if self.num_gpus_per_worker < 0 or self.cpus_per_worker <= 0 or self.batch_size < 1:
            raise ConfigError(
                "GPUs per worker must be >= 0, CPUs per worker > 0 and the batch size >= 1."
            )


def embed_cases_ray(
    encoder: DualEncoder,
    cases: Sequence[Case],
    shards_dir: str | Path,
    *,
    text_sections: Sequence[str] = TEXT_FIELDS,
    options: RayOptions | None = None,
) -> dict[str, Embeddings]:
    """Embed every case's image and one report per study on Ray (as `embed_cases` does in
    one process); the vectors are also left as Parquet shards in `shards_dir`."""
    options = options or RayOptions()
    check_unique_ids(cases)
    image_rows, report_rows = rows_to_embed(cases, text_sections)
    if not image_rows and not report_rows:
        raise IndexFormatError("none of the cases has an image or a report to index.")
    fingerprint = encoder.fingerprint()
    wanted = {
        "images": {cases[row].case_id: str(cases[row].image_path) for row in image_rows},
        "reports": {cases[row].case_id: cases[row].text(text_sections) for row in report_rows},
    }
    embeddings = {}
    with _ray_runtime(options) as ray, tempfile.TemporaryDirectory() as model_copy:
        options = fit_to_cluster(options, ray.cluster_resources())
        model = ray.put(_model_files(encoder, Path(model_copy)))
        for modality, items in wanted.items():
            if not items:
                continue
            shards = ShardStore(Path(shards_dir), modality, fingerprint, options.rows_per_shard)
            vectors = shards.vectors()
            todo = {case_id: item for case_id, item in items.items() if case_id not in vectors}
            if todo:
                logger.info(
                    "embedding %d %s on Ray (%d already in %s)",
                    len(todo),
                    modality,
                    len(items) - len(todo),
                    shards_dir,
                )
                batches = _run(ray, modality, todo, model, fingerprint, encoder, options)
                for case_ids, batch in batches:
                    shards.add(case_ids, batch)
                shards.flush()
                vectors = shards.vectors()
            missing = [case_id for case_id in items if case_id not in vectors]
            if missing:
                raise IndexFormatError(
                    f"the Ray job returned no {modality} vector for {len(missing)} cases "
                    f"(e.g. {missing[0]}); run the build again to embed them."
                )
            rows = image_rows if modality == "images" else report_rows
            embeddings[modality] = Embeddings(
                np.array(rows, dtype=np.int64),
                np.stack([vectors[cases[row].case_id] for row in rows]).astype(np.float32),
            )
    return embeddings


# --- the Ray job -----------------------------------------------------------------------------
def _run(ray, modality, todo, model, fingerprint, encoder, options) -> Iterator:
    """(case ids, vectors) batches as the actors finish them, each case id once."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    column = "image_path" if modality == "images" else "text"
    dataset = ray.data.from_items(
        [{"case_id": case_id, column: item} for case_id, item in todo.items()],
        override_num_blocks=min(-(-len(todo) // options.batch_size), MAX_BLOCKS),
    )
    if modality == "images":
        dataset = dataset.map_batches(
            _read_images,
            fn_kwargs={"preprocess": encoder.preprocess},
            batch_size=options.batch_size,
            num_cpus=options.read_cpus,
        )
    dataset = dataset.map_batches(
        _Embedder,
        fn_constructor_kwargs={
            "model": model,
            "fingerprint": fingerprint,
            "device": "cuda" if options.num_gpus_per_worker > 0 else "cpu",
            "threads": max(1, int(options.cpus_per_worker)),
        },
        batch_size=options.batch_size,
        compute=ray.data.ActorPoolStrategy(size=options.workers),
        num_gpus=options.num_gpus_per_worker,
        num_cpus=options.cpus_per_worker,
    )
    seen: set[str] = set()
    with tqdm(total=len(todo), desc=f"embedding {modality} on Ray", unit=modality[:-1]) as bar:
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                _raise_task_error(batch.get("error"))
                fresh = [i for i, case_id in enumerate(batch["case_id"]) if case_id not in seen]
                case_ids = [str(batch["case_id"][i]) for i in fresh]
                seen.update(case_ids)
                bar.update(len(case_ids))
                yield case_ids, np.asarray(batch["vector"], dtype=np.float32)[fresh]
        except Exception as error:
            raise _medxpert_error(error) from error


def fit_to_cluster(options: RayOptions, resources: dict[str, float]) -> RayOptions:
    """`options` with the actors' CPU share shrunk to what the cluster has (Ray would wait
    for ever for an actor it cannot place); a clear error for GPUs it lacks."""
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    if options.num_gpus_per_worker * options.workers > gpus:
        raise ConfigError(
            f"{options.workers} workers with {options.num_gpus_per_worker} GPUs each need "
            f"{options.workers * options.num_gpus_per_worker:g} GPUs; the Ray cluster has "
            f"{gpus:g}. Lower --workers or --num-gpus-per-worker."
        )
    share = (cpus - options.read_cpus) / options.workers
    if share <= 0:
        raise ConfigError(
            f"the Ray cluster has {cpus:g} CPUs: too few for {options.workers} workers and "
            "the image readers. Lower --workers."
        )
    if share >= options.cpus_per_worker:
        return options
    logger.info(
        "%d workers x %g CPUs do not fit the cluster's %g CPUs: %.2f CPUs each",
        options.workers,
        options.cpus_per_worker,
        cpus,
        share,
    )
    return replace(options, cpus_per_worker=share)


def _read_images(batch: dict[str, np.ndarray], preprocess: dict) -> dict[str, np.ndarray]:
    """A Ray task: read and transform a batch of images for the encoder."""
    from medxpert.data.images import open_image
    from medxpert.encoders.transforms import image_transform

    transform = image_transform(
        int(preprocess["size"]),
        tuple(preprocess["mean"]),
        tuple(preprocess["std"]),
        preprocess.get("resize_mode", "longest"),
    )
    pixels, errors = [], []
    for path in batch["image_path"]:
        try:
            pixels.append(transform(open_image(path)).numpy())
            errors.append("")
        except MedXpertError as error:  # Ray Data would keep only its traceback as text
            pixels.append(np.zeros((3, *([int(preprocess["size"])] * 2)), np.float32))
            errors.append(f"{type(error).__name__}:{error}")
    return {"case_id": batch["case_id"], "pixels": np.stack(pixels), "error": np.array(errors)}


class _Embedder:
    """A Ray actor: one encoder, rebuilt from the files in the object store."""

    def __init__(self, model, fingerprint: str, device: str, threads: int) -> None:
        import ray
        import torch

        torch.set_num_threads(threads)
        files = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        self._directory = Path(tempfile.mkdtemp(prefix="medxpert-model-"))
        for name, data in files.items():
            (self._directory / name).parent.mkdir(parents=True, exist_ok=True)
            (self._directory / name).write_bytes(data)
        self.encoder = DualEncoder.load(self._directory, device=device)
        if self.encoder.fingerprint() != fingerprint:
            raise ModelFormatError(
                "the encoder rebuilt on a Ray worker has another fingerprint than the driver's: "
                "install the same MedXpert, torch and open_clip versions on every node."
            )
        shutil.rmtree(self._directory, ignore_errors=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "pixels" in batch:
            vectors = self.encoder.encode_pixels(batch["pixels"], batch_size=len(batch["pixels"]))
        else:
            texts = [str(text) for text in batch["text"]]
            vectors = self.encoder.encode_texts(texts, batch_size=len(texts), progress=False)
        return {"case_id": batch["case_id"], "vector": vectors} | (
            {"error": batch["error"]} if "error" in batch else {}
        )


def _model_files(encoder: DualEncoder, directory: Path) -> dict[str, bytes]:
    """The encoder's saved files (relative path → bytes), to ship to the actors; the encoder
    keeps the path it was loaded from, which the library's manifest records."""
    loaded_from = encoder.info.get("path")
    encoder.save(directory / "model")
    encoder.info = {**encoder.info, "path": loaded_from}
    root = directory / "model"
    return {
        str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()
    }


def _raise_task_error(errors: np.ndarray | None) -> None:
    """Raise, as its own class, the first MedXpert error a reading task recorded."""
    for recorded in [] if errors is None else errors:
        if recorded:
            name, message = str(recorded).split(":", 1)
            kind = getattr(medxpert.errors, name, IndexFormatError)
            raise (kind if issubclass(kind, MedXpertError) else IndexFormatError)(message)


def _medxpert_error(error: Exception) -> MedXpertError:
    """The MedXpert error a Ray task raised (unwrapped), or one that says what Ray reported."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, MedXpertError):
            return cause
        cause = getattr(cause, "cause", None) or cause.__cause__
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return IndexFormatError(f"the Ray embedding job failed: {first}")


@contextmanager
def _ray_runtime(options: RayOptions):
    """The `ray` module connected to a cluster: the one already initialised, the one at
    `options.address`, or a local runtime started here (and stopped after)."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "the Ray engine needs Ray Data: pip install 'ray[data]' (requirements.txt pins it)."
        ) from None
    if ray.is_initialized():
        yield ray
        return
    if options.address:
        ray.init(address=options.address, logging_level=logging.WARNING)
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)  # this machine's CPUs
    try:
        yield ray
    finally:
        ray.shutdown()


# --- shards ----------------------------------------------------------------------------------
class ShardStore:
    """Parquet shards of one modality's vectors, for one encoder: ``<modality>-<fingerprint>-
    <n>.parquet`` with columns ``case_id`` and ``vector``, each written atomically."""

    def __init__(self, directory: Path, modality: str, fingerprint: str, rows_per_shard: int):
        self.directory, self.modality, self.fingerprint = directory, modality, fingerprint
        self.rows_per_shard = rows_per_shard
        self._pending: list[tuple[list[str], np.ndarray]] = []
        self._pending_rows = 0

    @property
    def prefix(self) -> str:
        return f"{self.modality}-{self.fingerprint[:16]}-"

    def paths(self) -> list[Path]:
        return sorted(self.directory.glob(f"{self.prefix}*.parquet"))

    def vectors(self) -> dict[str, np.ndarray]:
        """case id → vector, over every shard of this encoder (the first one of a case wins)."""
        found: dict[str, np.ndarray] = {}
        for path in self.paths():
            table = pq.read_table(path)
            stored = (table.schema.metadata or {}).get(FINGERPRINT_KEY, b"").decode()
            if stored != self.fingerprint:
                raise IndexFormatError(
                    f"{path} was written by encoder {stored[:16] or '?'}, not "
                    f"{self.fingerprint[:16]}; delete it and build again."
                )
            vectors = _vector_matrix(table.column("vector"))
            for case_id, vector in zip(table.column("case_id").to_pylist(), vectors, strict=True):
                found.setdefault(case_id, vector)
        return found

    def add(self, case_ids: list[str], vectors: np.ndarray) -> None:
        if case_ids:
            self._pending.append((case_ids, vectors))
            self._pending_rows += len(case_ids)
        if self._pending_rows >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        case_ids = [case_id for ids, _ in self._pending for case_id in ids]
        vectors = np.concatenate([batch for _, batch in self._pending]).astype(np.float32)
        dim = vectors.shape[1]
        table = pa.table(
            {
                "case_id": pa.array(case_ids, pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
            }
        ).replace_schema_metadata({FINGERPRINT_KEY: self.fingerprint.encode()})
        self.directory.mkdir(parents=True, exist_ok=True)
        number = len(self.paths())
        with atomic_path(self.directory / f"{self.prefix}{number:05d}.parquet") as tmp:
            pq.write_table(table, tmp)
        self._pending, self._pending_rows = [], 0


def _vector_matrix(column: pa.ChunkedArray) -> np.ndarray:
    array = column.combine_chunks()
    if len(array) == 0:
        return np.empty((0, 0), dtype=np.float32)
    return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), -1)
