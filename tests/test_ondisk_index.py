"""`OnDiskIndex` with real FAISS: the build's tuning, the memory-mapped data file, the
manifest's shards and checksums, refusal of damaged files, and a `CaseLibrary` on disk."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from medxpert.data import Case
from medxpert.errors import ConfigError, IndexFormatError, StorageError
from medxpert.index import CaseLibrary, Embeddings, VectorIndex, default_factory, ondisk
from medxpert.index.library import read_manifest
from medxpert.index.ondisk import OnDiskIndex, is_disk_factory
from medxpert.index.vector_index import LARGE_FACTORY, load_faiss

N, DIM = 20_000, 32


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """L2-normalised vectors around 40 centres, so that IVF lists mean something."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    vectors = centres[rng.integers(0, 40, n)] + 0.35 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


VECTORS = clustered(N, DIM)
IDS = np.arange(N, dtype=np.int64) * 3 + 5  # not row numbers


def shards(size: int = 4_000) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(IDS[i : i + size], VECTORS[i : i + size]) for i in range(0, N, size)]


def recall_at_10(index, queries: np.ndarray, own: np.ndarray) -> float:
    """Recall@10 against exact search, each query's own id left out on both sides."""
    exact = IDS[np.argsort(-(queries @ VECTORS.T), axis=1)[:, :11]]
    found = index.search(queries, 11)[1]
    hits = [
        len(set(f[f != o][:10]) & set(e[e != o][:10])) / 10
        for f, e, o in zip(found, exact, own, strict=True)
    ]
    return float(np.mean(hits))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """factory → a built index (Flat keeps its shards)."""
    root = tmp_path_factory.mktemp("built")
    factories = ("disk:IVF{nlist},Flat", "disk:IVF128_HNSW32,SQ8", "disk:IVF64,PQ8x4")
    return {
        factory: OnDiskIndex.build(
            shards(),
            root / str(i),
            factory,
            stem="images",
            queries=300,
            keep_shards=i == 0,
            train_size=2_000 if "PQ" in factory else None,  # PQ trains slowly
        )
        for i, factory in enumerate(factories)
    }


@pytest.mark.parametrize(
    "factory", ["disk:IVF{nlist},Flat", "disk:IVF128_HNSW32,SQ8", "disk:IVF64,PQ8x4"]
)
def test_the_build_records_the_nprobe_it_tuned_and_load_uses_it(built, factory, tmp_path):
    index = built[factory]
    tuning, entry = index.tuning, index.describe()
    assert "{nlist}" not in index.factory and entry["factory"] == index.factory
    assert entry["tuning"]["nprobe"] == tuning.nprobe and entry["tuning"]["queries"] == 300
    assert entry["search_params"].split(",")[0] == f"nprobe={tuning.nprobe}"
    if "PQ" in factory:  # 4 bytes a vector cannot reach the target: the plateau is taken
        assert not entry["tuning"]["reached"] and tuning.nprobe < 64
    else:
        assert entry["tuning"]["reached"] and tuning.recall >= 0.95
    loaded = OnDiskIndex.load(index.directory, entry)
    assert loaded.search_params == entry["search_params"]
    held_out = np.random.default_rng(1).choice(N, 300, replace=False)
    measured = recall_at_10(loaded, VECTORS[held_out], IDS[held_out])
    assert abs(measured - tuning.recall) < 0.05, (measured, tuning)


def test_results_after_load_equal_those_before_and_the_data_is_mapped(built, tmp_path):
    index, queries = built["disk:IVF{nlist},Flat"], clustered(20, DIM, seed=2)
    before = index.search(queries, 10)
    entry = index.save(tmp_path / "lib", "images")
    loaded = OnDiskIndex.load(tmp_path / "lib", entry)
    assert str(tmp_path / "lib" / "images.ivfdata") in Path("/proc/self/maps").read_text()
    faiss = load_faiss()
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(loaded._index).invlists)
    assert lists.prefetch_nthread == 0  # no read-ahead threads: the lists are in the page cache
    (tmp_path / "lib").rename(tmp_path / "moved")
    moved = OnDiskIndex.load(tmp_path / "moved", entry)
    for got in (loaded.search(queries, 10), moved.search(queries, 10)):
        np.testing.assert_array_equal(got[1], before[1])
        np.testing.assert_allclose(got[0], before[0], rtol=1e-6)
    rows = IDS[[0, 7, 19_999]]
    np.testing.assert_array_equal(moved.reconstruct(rows), VECTORS[[0, 7, 19_999]])
    np.testing.assert_array_equal(moved.ids(), IDS)


def test_the_record_lists_the_shards_with_checksums(built):
    index = built["disk:IVF{nlist},Flat"]
    entry = index.describe()
    assert [s["count"] for s in entry["shards"]] == [4_000] * 5
    assert sum(s["count"] for s in entry["shards"]) == entry["count"] == N
    for shard in entry["shards"]:
        path = index.directory / shard["file"]
        assert path.stat().st_size == shard["bytes"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        assert entry["files"][shard["file"]]["sha256"] == shard["sha256"]
    data = index.directory / "images.ivfdata"
    assert (
        entry["files"]["images.ivfdata"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    )


def test_parallel_adds_build_the_same_index_as_one_worker(built, tmp_path):
    parallel = built["disk:IVF128_HNSW32,SQ8"]
    serial = OnDiskIndex.build(
        shards(), tmp_path, "disk:IVF128_HNSW32,SQ8", stem="images", workers=1, queries=300
    )
    assert serial.tuning == parallel.tuning
    queries = clustered(20, DIM, seed=3)
    for got, expected in zip(serial.search(queries, 10), parallel.search(queries, 10), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert (
        serial.describe()["files"]["images.ivfdata"]
        == parallel.describe()["files"]["images.ivfdata"]
    )


@pytest.mark.parametrize("damage", ["truncated", "a flipped byte"])
def test_a_damaged_data_file_is_refused_before_it_is_mapped(built, tmp_path, damage):
    entry = built["disk:IVF128_HNSW32,SQ8"].save(tmp_path, "images")
    data = tmp_path / "images.ivfdata"
    original = data.read_bytes()
    data.unlink()  # a new inode: the built index keeps its mapping
    if damage == "truncated":
        data.write_bytes(original[: len(original) // 2])
        for verify in (True, False):
            with pytest.raises(IndexFormatError, match="truncated"):
                OnDiskIndex.load(tmp_path, entry, verify=verify)
    else:
        flipped = bytearray(original)
        flipped[len(flipped) // 3] ^= 0xFF
        data.write_bytes(bytes(flipped))
        with pytest.raises(IndexFormatError, match="checksum"):
            OnDiskIndex.load(tmp_path, entry, verify=True)


def test_removal_keeps_tombstones_and_adding_is_refused(built, tmp_path):
    index = OnDiskIndex.load(
        built["disk:IVF128_HNSW32,SQ8"].directory, built["disk:IVF128_HNSW32,SQ8"].describe()
    )
    query = VECTORS[:1]
    first = index.search(query, 3)[1][0]
    assert index.remove(np.array([first[0], -1])) == 1 and len(index) == N - 1
    found = index.search(query, 3)[1][0]
    assert first[0] not in found and found[0] == first[1]
    entry = index.save(tmp_path, "images")
    assert entry["removed"] == [int(first[0])] and entry["count"] == N - 1
    assert first[0] not in OnDiskIndex.load(tmp_path, entry).search(query, 3)[1][0]
    with pytest.raises(IndexFormatError, match="medxpert index build"):
        index.add(query, np.array([1]))


def test_auto_picks_the_on_disk_factory_above_the_exact_scan_limit():
    assert default_factory(1_000_000, 256) == "Flat"
    assert default_factory(600_000, 512) == LARGE_FACTORY
    assert is_disk_factory(LARGE_FACTORY) and "IVF" in LARGE_FACTORY
    with pytest.raises(ConfigError, match="OnDiskIndex"):
        VectorIndex.build(VECTORS[:100], IDS[:100], "disk:IVF4,Flat")


# --- a CaseLibrary on disk ------------------------------------------------------------------------
class StubEncoder:
    """What a library asks of an encoder when it is given the embeddings."""

    backbone = "stub"
    info: dict = {}  # noqa: RUF012 - never saved, so it has no path

    def fingerprint(self) -> str:
        return "0123456789abcdef"


LIB_N = 6_000
LIB = VECTORS[:LIB_N]
CASES = [Case(f"nih:{i}", "nih", "train", image_path=f"/x/{i}.png") for i in range(LIB_N)]


def disk_library(factory: str = "disk:IVF{nlist},SQ8") -> CaseLibrary:
    found = {"images": Embeddings(np.arange(LIB_N, dtype=np.int64), LIB)}
    return CaseLibrary.from_embeddings(StubEncoder(), CASES, found, image_factory=factory)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(the library, its folder)."""
    library = disk_library()
    return library, library.save(tmp_path_factory.mktemp("indexes") / "lib")


def test_a_library_on_disk_round_trips_and_answers_like_one_in_ram(saved):
    library, directory = saved
    assert {p.name for p in directory.iterdir()} == {
        "manifest.json",
        "cases.parquet",
        "images.faiss",
        "images.ivfdata",
    }
    manifest = read_manifest(directory)
    assert {"images.faiss", "images.ivfdata", "cases.parquet"} == set(manifest["files"])
    entry = manifest["indexes"]["images"]
    assert entry["factory"] == "disk:IVF153,SQ8" and entry["count"] == LIB_N
    assert entry["tuning"]["reached"] and entry["search_params"].startswith("nprobe=")
    loaded = CaseLibrary.load(directory, encoder=StubEncoder())
    queries, own = LIB[:200], np.arange(200)
    on_disk = loaded.indexes["images"]
    np.testing.assert_array_equal(
        on_disk.search(queries, 10)[1], library.indexes["images"].search(queries, 10)[1]
    )
    in_ram = VectorIndex.build(LIB, np.arange(LIB_N), "IVF{nlist},SQ8", entry["search_params"])
    for index in (on_disk, in_ram):
        exact = np.argsort(-(queries @ LIB.T), axis=1)[:, 1:11]
        found = index.search(queries, 11)[1]
        hits = [
            len(set(f[f != o][:10]) & set(e)) / 10
            for f, e, o in zip(found, exact, own, strict=True)
        ]
        assert np.mean(hits) >= 0.95
    stored = loaded.stored_vectors("images")
    np.testing.assert_array_equal(stored.rows, np.arange(LIB_N))
    cosines = np.einsum("ij,ij->i", stored.vectors, LIB)  # SQ8: decoded, not exact
    assert cosines.min() > 0.95 and cosines.mean() > 0.999
    with pytest.raises(IndexFormatError, match="compresses"):
        loaded.image_vectors_by_path()


def test_the_exact_vectors_of_a_flat_library_on_disk(tmp_path):
    library = CaseLibrary.load(disk_library("disk:IVF64,Flat").save(tmp_path / "lib"))
    vectors, cases = library.image_vectors()
    np.testing.assert_array_equal(vectors, LIB)
    assert [case.case_id for case in cases] == [case.case_id for case in CASES]
    assert len(library.image_vectors_by_path()) == LIB_N


def test_a_damaged_library_data_file_is_refused_with_or_without_verify(saved, tmp_path):
    _, directory = saved
    copy = CaseLibrary.load(directory).save(tmp_path / "copy")
    data = copy / "images.ivfdata"
    original = data.read_bytes()
    data.unlink()
    data.write_bytes(original[:-4096])
    for verify in (True, False):
        with pytest.raises(IndexFormatError, match="truncated"):
            CaseLibrary.load(copy, verify=verify)
    data.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
    with pytest.raises(IndexFormatError, match="checksum"):
        CaseLibrary.load(copy)


def test_adding_cases_is_refused_and_leaves_the_library_unchanged(saved):
    library = CaseLibrary.load(saved[1])
    new = Case("nih:new", "nih", "train", image_path="/x/new.png")
    with pytest.raises(IndexFormatError, match="medxpert index build"):
        library.add_cases(StubEncoder(), [new])
    assert len(library.cases) == LIB_N and library.row_of("nih:new") is None
    assert library.count("images") == LIB_N


def test_removed_cases_stay_removed_through_save_and_load(saved, tmp_path):
    library = CaseLibrary.load(saved[1])
    query = LIB[10:11]
    assert library.remove_cases(["nih:10", "nih:11"]) == 2
    again = CaseLibrary.load(library.save(tmp_path / "elsewhere"))
    assert again.count("images") == LIB_N - 2
    assert again.manifest["indexes"]["images"]["removed"] == [10, 11]
    assert 10 not in again.indexes["images"].search(query, 5)[1]
    assert set(again.indexes["images"].ids()) == set(range(LIB_N)) - {10, 11}


def test_saving_over_the_folder_it_was_loaded_from_keeps_both_usable(saved, tmp_path):
    directory = saved[0].save(tmp_path / "lib")
    library = CaseLibrary.load(directory)
    queries = LIB[:50]
    before = library.indexes["images"].search(queries, 10)[1]
    library.remove_cases(["nih:3"])
    library.save(directory)  # replaces the folder whose data file `library` has mapped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib"]
    after = library.indexes["images"].search(queries, 10)[1]
    untouched = ~(before == 3).any(axis=1)
    assert 3 not in after and untouched.sum() > 40
    np.testing.assert_array_equal(after[untouched], before[untouched])
    reread = CaseLibrary.load(directory)
    np.testing.assert_array_equal(reread.indexes["images"].search(queries, 10)[1], after)
    library.save(tmp_path / "again")
    assert CaseLibrary.load(tmp_path / "again").count("images") == LIB_N - 1


def test_a_failed_save_leaves_the_previous_library_as_it_was(saved, tmp_path, monkeypatch):
    directory = saved[0].save(tmp_path / "lib")
    files = read_manifest(directory)["files"]
    library = CaseLibrary.load(directory)
    library.remove_cases(["nih:0"])  # a different library is being saved

    def full_disk(index, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ondisk, "_write", full_disk)
    with pytest.raises(StorageError, match=r"could not save .*No space left.*unchanged"):
        library.save(directory)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib"], "no temporaries left"
    assert json.loads((directory / "manifest.json").read_text())["files"] == files
    previous = CaseLibrary.load(directory)
    assert previous.count("images") == LIB_N
    np.testing.assert_array_equal(
        previous.indexes["images"].search(LIB[:5], 5)[1],
        saved[0].indexes["images"].search(LIB[:5], 5)[1],
    )
