"""The Ray engine of `medxpert index build`, on a real local Ray runtime: the same vectors and
searches as one process, a killed worker, resumption from its Parquet shards, clear errors, and
the CLI against a `ray start --head` cluster on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from medxpert.data import Case, load_cases
from medxpert.encoders import DualEncoder
from medxpert.errors import ConfigError, InvalidImageError
from medxpert.index import CaseLibrary, embed_cases
from medxpert.index.ray_engine import RayOptions, ShardStore, embed_cases_ray
from tests.builders import free_port, mini_packs, tiny_encoder

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def mini_data(tmp_path_factory, shared_pack):
    root = tmp_path_factory.mktemp("ray_data")
    shared = {pack: shared_pack(pack) for pack in ("nih_cxr14", "iu_xray", "covid_cxr")}
    return mini_packs(root / "data", shared, {"train": 16, "val": 4, "test": 0})


def test_cli_builds_the_same_library_on_a_ray_cluster(tmp_path, mini_data):
    """`ray start --head` on 127.0.0.1, then `medxpert index build --engine ray --address
    HOST:PORT` in another process (as on a cluster node, or in a Ray Job): the library has
    the single-process build's format, vectors and answers. (First in the file: it runs before
    the module's in-process runtime starts.)"""
    tiny_encoder(tmp_path).save(tmp_path / "models" / "medxpert-default")
    environment = {
        **os.environ,
        "MEDXPERT_DATA_DIR": str(mini_data),
        "MEDXPERT_MODELS_DIR": str(tmp_path / "models"),
        "MEDXPERT_INDEXES_DIR": str(tmp_path / "indexes"),
        "MEDXPERT_CACHE_DIR": str(tmp_path / "cache"),
        "RAY_USAGE_STATS_ENABLED": "0",
        # A loopback-only test cluster: without Ray's token authentication (in this sandbox a
        # driver in another process is refused with it on; docs/index.md covers real clusters).
        "RAY_AUTH_MODE": "disabled",
    }
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must be short
    head = [_ray_cli(), "start", "--head", "--node-ip-address", "127.0.0.1"]
    head += [f"--port={port}", "--num-cpus=2", "--include-dashboard=false"]
    head += [f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    subprocess.run(head, env=environment, check=True, capture_output=True, timeout=120)
    try:
        build = [sys.executable, "-m", "medxpert", "index", "build"]
        for name, extra in (("single", []), ("ray", ["--engine", "ray"])):
            extra += ["--address", f"127.0.0.1:{port}"] if name == "ray" else []
            done = subprocess.run(
                [*build, "--name", name, *extra],
                env=environment,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, done.stderr[-3000:]
    finally:
        subprocess.run([_ray_cli(), "stop", "--force"], env=environment, capture_output=True)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert "Ray shards of the vectors" in done.stdout
    single = CaseLibrary.load(tmp_path / "indexes" / "single")
    on_ray = CaseLibrary.load(tmp_path / "indexes" / "ray")
    assert set(on_ray.manifest) == set(single.manifest)
    assert on_ray.manifest["encoder"] == single.manifest["encoder"]
    assert [c.case_id for c in on_ray.cases] == [c.case_id for c in single.cases]
    for modality in ("images", "reports"):
        a, b = single.stored_vectors(modality), on_ray.stored_vectors(modality)
        np.testing.assert_array_equal(a.rows, b.rows)
        assert np.abs(a.vectors - b.vectors).max() <= TOLERANCE
        queries = a.vectors[:5]
        assert (
            single.indexes[modality].search(queries, 10)[1].tolist()
            == on_ray.indexes[modality].search(queries, 10)[1].tolist()
        )
    shards = list((tmp_path / "cache" / "ray-shards" / "ray").glob("*.parquet"))
    assert {path.name.split("-")[0] for path in shards} == {"images", "reports"}


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray runtime for this module's in-process tests."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def default_encoder():
    """The offline default towers (untuned): the real architecture, real sizes."""
    return DualEncoder.create("medxpert-default", device="cpu")


@pytest.fixture(scope="module")
def iu_cases(shared_pack):
    shared_pack("iu_xray")
    return load_cases("iu_xray", "train")[:64]


def _shard_case_ids(directory: Path, modality: str, fingerprint: str) -> list[str]:
    paths = ShardStore(directory, modality, fingerprint, 1).paths()
    return [case_id for path in paths for case_id in pq.read_table(path)["case_id"].to_pylist()]


def test_ray_vectors_equal_one_process_and_libraries_answer_alike(
    tmp_path, local_ray, default_encoder, iu_cases
):
    single = embed_cases(default_encoder, iu_cases)
    on_ray = embed_cases_ray(default_encoder, iu_cases, tmp_path / "shards")
    assert set(on_ray) == set(single) == {"images", "reports"}
    for modality in single:
        np.testing.assert_array_equal(on_ray[modality].rows, single[modality].rows)
        assert np.abs(on_ray[modality].vectors - single[modality].vectors).max() <= TOLERANCE
    libraries = [
        CaseLibrary.from_embeddings(default_encoder, iu_cases, found) for found in (single, on_ray)
    ]
    queries = default_encoder.encode_texts(["right lower lobe pneumonia", "normal chest"])
    for modality in ("images", "reports"):
        answers = [library.indexes[modality].search(queries, 10)[1] for library in libraries]
        np.testing.assert_array_equal(answers[0], answers[1])


def test_a_killed_worker_leaves_every_case_embedded_exactly_once(
    tmp_path, local_ray, default_encoder, iu_cases
):
    """SIGKILL one embedding actor after the first shard is written: Ray restarts it and
    retries its batch; the shards hold every case once, with the one-process vectors."""
    shards = tmp_path / "shards"
    fingerprint = default_encoder.fingerprint()
    result: dict = {}

    def build() -> None:
        try:
            result.update(
                embed_cases_ray(
                    default_encoder, iu_cases, shards, options=RayOptions(rows_per_shard=8)
                )
            )
        except BaseException as error:  # surfaced by the assertion below
            result["error"] = error

    worker = threading.Thread(target=build)
    worker.start()
    killed, deadline = None, time.monotonic() + 300
    while worker.is_alive() and killed is None and time.monotonic() < deadline:
        written = _shard_case_ids(shards, "images", fingerprint) if shards.exists() else []
        actors = _embedding_actor_pids()
        if written and len(written) < len(iu_cases) and actors:
            os.kill(actors[0], signal.SIGKILL)
            killed = (actors[0], len(written))
        time.sleep(0.05)
    worker.join(timeout=600)
    assert killed is not None, "no embedding actor was caught mid-job"
    assert "error" not in result, result.get("error")
    images = _shard_case_ids(shards, "images", fingerprint)
    assert sorted(images) == sorted(case.case_id for case in iu_cases)  # each exactly once
    assert killed[0] not in _embedding_actor_pids()
    single = embed_cases(default_encoder, iu_cases)
    assert np.abs(result["images"].vectors - single["images"].vectors).max() <= TOLERANCE


def _embedding_actor_pids() -> list[int]:
    """The processes of the embedding actors (their title names the UDF)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"MapWorker(MapBatches(_Embedder))" in command:
                pids.append(int(entry.name))
    return pids


def test_a_rerun_embeds_only_what_its_shards_lack(tmp_path, local_ray, iu_cases, caplog):
    encoder = tiny_encoder(tmp_path)
    shards = tmp_path / "shards"
    first = embed_cases_ray(encoder, iu_cases[:24], shards)
    caplog.set_level("INFO", logger="medxpert.index.ray_engine")
    again = embed_cases_ray(encoder, iu_cases, shards)
    assert "embedding 40 images on Ray (24 already in" in caplog.text
    np.testing.assert_array_equal(again["images"].vectors[:24], first["images"].vectors)
    fingerprint = encoder.fingerprint()
    ids = _shard_case_ids(shards, "images", fingerprint)
    assert sorted(ids) == sorted(case.case_id for case in iu_cases)
    single = embed_cases(encoder, iu_cases)
    assert np.abs(again["images"].vectors - single["images"].vectors).max() <= TOLERANCE
    # Shards of another encoder are never mixed in: that encoder starts from nothing.
    other = tiny_encoder(tmp_path / "other", seed=1)
    caplog.clear()
    embed_cases_ray(other, iu_cases[:8], shards)
    assert "embedding 8 images on Ray (0 already in" in caplog.text


def test_an_unreadable_image_fails_with_its_medxpert_error(tmp_path, local_ray):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    good = Path(shutil.copy(ROOT / "docs" / "images" / "heatmap.png", tmp_path / "ok.png"))
    cases = [
        Case(case_id="good", source="csv", split="train", image_path=str(good)),
        Case(case_id="broken", source="csv", split="train", image_path=str(broken)),
    ]
    with pytest.raises(InvalidImageError, match=r"broken\.png"):
        embed_cases_ray(tiny_encoder(tmp_path), cases, tmp_path / "shards")


def test_ray_client_addresses_are_refused_with_the_way_that_works():
    """Ray Data does not run through Ray Client (ray://); say what to do instead."""
    with pytest.raises(ConfigError, match="ray job submit"):
        RayOptions(address="ray://head:10001")
