"""Project files that must stay consistent with each other."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_requirements_differ_only_in_faiss():
    cpu = (ROOT / "requirements.txt").read_text().splitlines()
    gpu = (ROOT / "requirements-gpu.txt").read_text().splitlines()
    assert len(cpu) == len(gpu)
    differing = [(a, b) for a, b in zip(cpu, gpu, strict=True) if a != b]
    assert [a.split("==")[0] for a, b in differing if not a.startswith("#")] == ["faiss-cpu"]
    assert any(b.startswith("faiss-gpu") for _, b in differing)


def test_torch_pins_are_the_ones_on_this_machine():
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
