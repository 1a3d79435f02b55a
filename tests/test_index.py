"""VectorIndex against a NumPy reference; the saved case library and everything that can go
wrong with it (kill during save, truncation, corruption, another encoder)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from medxpert.errors import (
    ConfigError,
    IndexFormatError,
    IndexNotFoundError,
    QueryError,
    StorageError,
)
from medxpert.index import CaseLibrary, VectorIndex, default_factory
from medxpert.index.library import read_manifest
from medxpert.index.vector_index import LARGE_FACTORY
from tests.builders import library_cases, tiny_encoder


def unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("n_queries", [1, 3, 25])  # the scan path (≤ 4 queries) and FAISS's
def test_exact_search_matches_numpy(n_queries):
    gallery, queries = unit_vectors(2000, 64), unit_vectors(n_queries, 64, seed=1)
    ids = np.arange(5000, 7000)
    index = VectorIndex.build(gallery, ids, "Flat")
    scores, found = index.search(queries, 10)
    expected = np.argsort(-(queries @ gallery.T), axis=1)[:, :10]
    np.testing.assert_array_equal(found, ids[expected])
    np.testing.assert_allclose(
        scores, np.take_along_axis(queries @ gallery.T, expected, 1), rtol=1e-5
    )


@pytest.mark.parametrize("factory", ["HNSW32", "IVF{nlist},SQ8", "IVF{nlist},Flat"])
def test_approximate_indexes_find_most_true_neighbours(factory):
    gallery, queries = unit_vectors(3000, 32), unit_vectors(50, 32, seed=1)
    index = VectorIndex.build(gallery, np.arange(3000), factory)
    assert "{nlist}" not in index.factory
    found = index.search(queries, 10)[1]
    exact = np.argsort(-(queries @ gallery.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)])
    assert recall > 0.6, recall


def test_bad_factory_dimension_and_k():
    with pytest.raises(ConfigError, match="factory string"):
        VectorIndex.build(unit_vectors(10, 8), np.arange(10), "NotAnIndex")
    index = VectorIndex.build(unit_vectors(10, 8), np.arange(10))
    with pytest.raises(IndexFormatError, match="another encoder"):
        index.search(unit_vectors(1, 16), 3)
    with pytest.raises(QueryError, match="positive"):
        index.search(unit_vectors(1, 8), 0)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_add_and_remove(factory):
    vectors = unit_vectors(100, 16)
    index = VectorIndex.build(vectors[:60], np.arange(60), factory)
    index.add(vectors[60:], np.arange(60, 100))
    assert len(index) == 100
    assert index.search(vectors[70], 1)[1][0, 0] == 70
    assert index.remove(np.array([70, 71, 999])) == 2
    assert len(index) == 98
    found = index.search(vectors[70:72], 5)[1]
    assert 70 not in found and 71 not in found and (found >= 0).all()


def test_auto_factory_rule():
    assert default_factory(10_000, 256) == "Flat"
    assert default_factory(1_000_000, 256) == "Flat"
    assert default_factory(377_000, 512) == "Flat"
    assert default_factory(600_000, 512) == LARGE_FACTORY  # on disk (test_ondisk_index.py)
    assert default_factory(5_000_000, 256) == LARGE_FACTORY == "disk:IVF{nlist}_HNSW32,SQ8"


# --- the saved library ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return tiny_encoder(tmp_path_factory.mktemp("enc"))


def test_library_build_save_load(encoder, tmp_path):
    cases = library_cases(tmp_path)
    library = CaseLibrary.build(encoder, cases)
    assert library.count("images") == 12 and library.count("reports") == 3
    directory = library.save(tmp_path / "indexes" / "lib")
    assert {p.name for p in directory.iterdir()} == {
        "manifest.json",
        "cases.parquet",
        "images.faiss",
        "reports.faiss",
    }
    manifest = library.manifest
    assert manifest["encoder"]["fingerprint"] == encoder.fingerprint()
    assert manifest["indexes"]["images"] == {
        "file": "images.faiss",
        "factory": "Flat",
        "search_params": "",
        "count": 12,
        "removed": [],
    }
    assert set(manifest["files"]["cases.parquet"]) == {"bytes", "sha256"}
    assert {"faiss", "numpy", "torch", "open_clip", "medxpert"} <= set(manifest["versions"])
    loaded = CaseLibrary.load(directory, encoder=encoder)
    query = encoder.encode_texts(["level 1 pleural effusion."])
    np.testing.assert_array_equal(
        loaded.indexes["reports"].search(query, 3)[1],
        library.indexes["reports"].search(query, 3)[1],
    )
    assert [c.case_id for c in loaded.cases] == [c.case_id for c in cases]
    mapped = CaseLibrary.load(directory, encoder=encoder, mmap=True)
    np.testing.assert_array_equal(
        mapped.indexes["reports"].search(query, 3)[1],
        library.indexes["reports"].search(query, 3)[1],
    )


def test_add_and_remove_cases_then_save(encoder, tmp_path):
    cases = library_cases(tmp_path)
    library = CaseLibrary.build(encoder, cases[:8])
    assert library.add_cases(encoder, cases) == len(cases) - 8
    assert library.count("images") == 12 and library.count("reports") == 3
    assert library.remove_cases(["nih:0", "nih:1"]) == 2
    assert library.count("images") == 10
    loaded = CaseLibrary.load(library.save(tmp_path / "lib"), encoder=encoder)
    assert loaded.count("images") == 10


def test_another_encoder_is_refused(encoder, tmp_path):
    directory = CaseLibrary.build(encoder, library_cases(tmp_path)).save(tmp_path / "lib")
    other = tiny_encoder(tmp_path / "other", seed=7)
    with pytest.raises(IndexFormatError, match=r"built with encoder .* not comparable"):
        CaseLibrary.load(directory, encoder=other)


def test_missing_truncated_and_corrupt_files(encoder, tmp_path):
    with pytest.raises(IndexNotFoundError, match="medxpert index build"):
        CaseLibrary.load(tmp_path / "indexes" / "absent")
    directory = CaseLibrary.build(encoder, library_cases(tmp_path)).save(tmp_path / "lib")
    faiss_file = directory / "images.faiss"
    original = faiss_file.read_bytes()
    faiss_file.write_bytes(original[:-100])
    with pytest.raises(IndexFormatError, match="truncated"):
        CaseLibrary.load(directory)
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    faiss_file.write_bytes(bytes(flipped))
    with pytest.raises(IndexFormatError, match="checksum"):
        CaseLibrary.load(directory)
    faiss_file.unlink()
    with pytest.raises(IndexFormatError, match="missing"):
        CaseLibrary.load(directory)


def test_kill_during_save_leaves_the_previous_library_usable(encoder, tmp_path):
    """A real process is killed (SIGKILL) in the middle of saving over an existing library."""
    cases = library_cases(tmp_path)
    directory = CaseLibrary.build(encoder, cases).save(tmp_path / "lib")
    query = encoder.encode_texts(["level 2 pleural effusion."])
    before = CaseLibrary.load(directory, encoder=encoder).indexes["reports"].search(query, 3)
    encoder.save(tmp_path / "model")
    child = textwrap.dedent(f"""
        import os, signal
        from medxpert.encoders import DualEncoder
        from medxpert.index import CaseLibrary, VectorIndex
        encoder = DualEncoder.load({str(tmp_path / "model")!r}, device="cpu")
        library = CaseLibrary.load({str(directory)!r}, encoder=encoder)
        library.cases = library.cases[:12]            # a different library is being saved
        def die(self, path):
            os.kill(os.getpid(), signal.SIGKILL)      # killed after cases.parquet, mid-save
        VectorIndex.save = die
        library.save({str(directory)!r})
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    after = CaseLibrary.load(directory, encoder=encoder)
    assert len(after.cases) == len(cases)
    np.testing.assert_array_equal(after.indexes["reports"].search(query, 3)[1], before[1])


def test_scan_path_follows_changes_and_memory_mapping(tmp_path):
    vectors = unit_vectors(500, 32)
    index = VectorIndex.build(vectors[:300], np.arange(300) + 1000, "Flat")
    query = vectors[400:401]
    index.add(vectors[300:], np.arange(300, 500) + 1000)
    assert index.remove(np.array([1000 + int(np.argmax(vectors @ query[0]))])) == 1
    order = np.argsort(-(vectors @ query[0]))[1:6] + 1000
    np.testing.assert_array_equal(index.search(query, 5)[1][0], order)
    mapped = VectorIndex.load(index.save(tmp_path / "i.faiss"), "Flat", mmap=True)
    np.testing.assert_array_equal(mapped.search(query, 5)[1][0], order)
    empty = VectorIndex.build(np.empty((0, 32), np.float32), np.empty(0, np.int64))
    assert empty.search(query, 1)[1].tolist() == [[-1]]


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF{nlist},SQ8", "IVF{nlist},PQ8"])
def test_a_memory_mapped_index_answers_as_one_read_into_ram(factory, tmp_path):
    gallery, queries = unit_vectors(3000, 32), unit_vectors(6, 32, seed=1)
    built = VectorIndex.build(gallery, np.arange(3000) + 10, factory)
    path = built.save(tmp_path / "i.faiss")
    in_ram = VectorIndex.load(path, built.factory, mmap=False)
    mapped = VectorIndex.load(path, built.factory)
    assert mapped.memory_mapped and not in_ram.memory_mapped
    assert str(path) in Path("/proc/self/maps").read_text()  # the file itself is mapped
    for n in (1, len(queries)):  # the scan path and FAISS's
        found = mapped.search(queries[:n], 10), in_ram.search(queries[:n], 10)
        for got, expected in zip(*found, strict=True):
            np.testing.assert_array_equal(got, expected)
    for index in (in_ram, mapped):  # a change reads the mapped index into RAM first
        index.add(unit_vectors(5, 32, seed=2), np.arange(5) + 5000)
        assert index.remove(np.array([10, 11])) == 2
    assert not mapped.memory_mapped and mapped.search_params == in_ram.search_params
    for got, expected in zip(mapped.search(queries, 10), in_ram.search(queries, 10), strict=True):
        np.testing.assert_array_equal(got, expected)
    reread = VectorIndex.load(path, built.factory)
    np.testing.assert_array_equal(reread.search(queries, 10)[1], built.search(queries, 10)[1])


def test_image_vectors_by_path_are_the_encoders_and_never_compressed(encoder, tmp_path):
    cases = library_cases(tmp_path)
    library = CaseLibrary.build(encoder, cases)
    vectors = library.image_vectors_by_path()
    assert len(vectors) == 12
    path = cases[3].image_path
    np.testing.assert_allclose(vectors[path], encoder.encode_images([path])[0], rtol=1e-5)
    compressed = CaseLibrary.build(encoder, cases, image_factory="SQ8")
    with pytest.raises(IndexFormatError, match="compresses"):
        compressed.image_vectors_by_path()


# --- a failed write (a full disk), and what a killed build leaves ---------------------------
def big_image_library(encoder, n: int = 3000) -> CaseLibrary:
    """Image-only cases whose image index is much larger than their case table."""
    from medxpert.data import Case
    from medxpert.index import Embeddings

    cases = [Case(f"nih:{i}", "nih", "train", image_path=f"/x/{i}.png") for i in range(n)]
    dim = encoder.encode_texts(["a"]).shape[1]
    vectors = {"images": Embeddings(np.arange(n, dtype=np.int64), unit_vectors(n, dim))}
    return CaseLibrary.from_embeddings(encoder, cases, vectors)


SAVE_UNDER_A_FILE_SIZE_LIMIT = textwrap.dedent("""
    import resource, signal, sys
    from medxpert.encoders import DualEncoder
    from medxpert.errors import StorageError
    from medxpert.index import CaseLibrary
    model, directory, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    library = CaseLibrary.load(directory, encoder=DualEncoder.load(model, device="cpu"))
    library.remove_cases([library.cases[0].case_id])  # a different library is being saved
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails: EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        library.save(directory)
    except StorageError as error:
        sys.exit(f"StorageError: {error}")
""")


def files_beside(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.parent.iterdir())


@pytest.mark.parametrize("failing", ["cases.parquet", "images.faiss"])
def test_a_failed_write_is_a_clear_error_and_the_previous_library_stays(encoder, tmp_path, failing):
    """The kernel refuses a write (past a file size limit: EFBIG, as ENOSPC on a full disk)."""
    directory = big_image_library(encoder).save(tmp_path / "indexes" / "lib")
    files = read_manifest(directory)["files"]
    assert files["images.faiss"]["bytes"] > 4 * files["cases.parquet"]["bytes"]
    limit = files[failing]["bytes"] // 2
    encoder.save(tmp_path / "model")
    arguments = [str(tmp_path / "model"), str(directory), str(limit)]
    done = subprocess.run(
        [sys.executable, "-c", SAVE_UNDER_A_FILE_SIZE_LIMIT, *arguments],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1, done.stderr
    assert "StorageError: could not save the case library" in done.stderr
    assert "File too large" in done.stderr and "if any, is unchanged" in done.stderr
    assert "Traceback" not in done.stderr
    assert files_beside(directory) == ["lib"], "no temporaries left"
    assert read_manifest(directory)["files"] == files
    assert CaseLibrary.load(directory, encoder=encoder).count("images") == 3000


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs: a real full disk (needs root; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)  # loaded libraries map it


def fill(disk: Path, leave: int) -> None:
    """Fill `disk` until only `leave` bytes (whole pages) are free."""
    with (disk / "filler").open("wb") as handle:
        while (free := shutil.disk_usage(disk).free) > leave:
            handle.write(b"\0" * min(free - leave, 1 << 16))
            handle.flush()


@pytest.mark.parametrize("room", ["nothing", "the table"])
def test_a_full_disk_is_a_clear_error_and_the_previous_library_stays(
    encoder, tmp_path, small_disk, room
):
    """A real full disk, with no room at all and with room for the case table only (FAISS's
    own writer would cut the index short silently there; MedXpert writes it through Python)."""
    cases = library_cases(tmp_path)
    directory = CaseLibrary.build(encoder, cases).save(small_disk / "lib")
    query = encoder.encode_texts(["level 1 pleural effusion."])
    before = CaseLibrary.load(directory, encoder=encoder).indexes["reports"].search(query, 3)
    new = CaseLibrary.build(encoder, cases[:12])
    table = (new.save(tmp_path / "elsewhere") / "cases.parquet").stat().st_size
    fill(small_disk, 0 if room == "nothing" else -(-table // 4096) * 4096)
    with pytest.raises(StorageError, match=r"could not save the case library .*No space left"):
        new.save(directory)
    assert files_beside(directory) == ["filler", "lib"]
    (small_disk / "filler").unlink()
    after = CaseLibrary.load(directory, encoder=encoder)
    assert len(after.cases) == len(cases)
    np.testing.assert_array_equal(after.indexes["reports"].search(query, 3)[1], before[1])


def test_the_next_build_removes_what_a_killed_one_left(encoder, tmp_path):
    """A real process is killed (SIGKILL) mid-save: its temporary folder stays beside the
    library until the next save, which removes it."""
    cases = library_cases(tmp_path)
    directory = CaseLibrary.build(encoder, cases).save(tmp_path / "lib")
    encoder.save(tmp_path / "model")
    child = textwrap.dedent(f"""
        import os, signal
        from medxpert.encoders import DualEncoder
        from medxpert.index import CaseLibrary, VectorIndex
        encoder = DualEncoder.load({str(tmp_path / "model")!r}, device="cpu")
        library = CaseLibrary.load({str(directory)!r}, encoder=encoder)
        VectorIndex.save = lambda self, path: os.kill(os.getpid(), signal.SIGKILL)
        library.save({str(directory)!r})
    """)
    assert subprocess.run([sys.executable, "-c", child]).returncode == -9
    left = [name for name in files_beside(directory) if name.startswith(".lib.")]
    assert len(left) == 1 and left[0].endswith(".tmp"), left
    CaseLibrary.build(encoder, cases[:12]).save(directory)
    assert not [name for name in files_beside(directory) if name.startswith(".lib.")]
    assert len(CaseLibrary.load(directory, encoder=encoder).cases) == 12
