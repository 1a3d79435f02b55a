"""The package outside the checkout: the wheel built from pyproject.toml installs into a fresh
venv with its declared dependency ranges met, and its console script searches a tiny library
from a folder that is not the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.builders import free_port

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DATA = (
    "medxpert/encoders/backbones.json",
    "medxpert/encoders/model_configs/medxpert-default.json",
    "medxpert/labels/data/observations.json",
    "medxpert/app/app.py",  # the Streamlit page that `medxpert app` serves
)


def declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [
        r for name, rs in project["optional-dependencies"].items() if name != "all" for r in rs
    ]
    return {
        canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"] + extras)
    }


def pins(file: str) -> dict[str, str]:
    lines = (ROOT / file).read_text().splitlines()
    found = (Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip())
    return {canonicalize_name(r.name): next(iter(r.specifier)).version for r in found}


@pytest.mark.parametrize("file", ["requirements.txt", "requirements-gpu.txt"])
def test_every_pin_is_declared_in_pyproject_within_its_range(file):
    ranges = declared()
    outside = {
        name: (version, str(ranges[name].specifier) if name in ranges else "undeclared")
        for name, version in pins(file).items()
        if name not in ranges or not ranges[name].specifier.contains(version)
    }
    assert outside == {}


def fresh_environment() -> dict[str, str]:
    """This environment without pip's local find-links and config, so that `--no-index` can
    install nothing but the wheel itself, and without a path back into the checkout."""
    drop = ("PIP_", "PYTHONPATH", "VIRTUAL_ENV")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**environment, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources, installed into a fresh venv whose only other
    path is this interpreter's site-packages (the pinned dependencies; nothing is downloaded).
    Returns the venv's bin folder."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"
    shutil.copytree(
        ROOT / "medxpert", source / "medxpert", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    environment = fresh_environment()
    pip = [sys.executable, "-m", "pip"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", root / "dist"]
    subprocess.run([*build, source], check=True, env=environment, capture_output=True)
    (wheel,) = (root / "dist").glob("medxpert-*.whl")
    assert set(PACKAGE_DATA) <= set(zipfile.ZipFile(wheel).namelist())

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    purelib = Path(sysconfig.get_paths(vars={"base": str(venv)})["purelib"])
    (purelib / "_pinned_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [*pip, "--python", venv / "bin" / "python", "install", "--no-index"]
    done = subprocess.run(
        [*install, f"{wheel}[cpu,api]"], env=environment, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return venv / "bin"


@pytest.mark.slow
def test_the_installed_package_is_the_wheels_not_the_checkouts(installed, tmp_path):
    where = subprocess.run(
        [installed / "python", "-c", "import medxpert.app as a; print(a.__file__, a.PAGE)"],
        cwd=tmp_path,
        env=fresh_environment(),
        capture_output=True,
        text=True,
        check=True,
    )
    package, page = map(Path, where.stdout.split())
    assert package.is_relative_to(installed.parent) and page.is_relative_to(installed.parent)
    assert page.is_file(), "the page `medxpert app` serves ships in the wheel"


@pytest.mark.slow
def test_the_console_script_helps_and_searches_a_tiny_library(installed, make_workspace, tmp_path):
    environment = {**fresh_environment(), **make_workspace(tmp_path / "workspace")}
    run = {"cwd": tmp_path, "env": environment, "capture_output": True, "text": True}
    helped = subprocess.run([installed / "medxpert", "--help"], **run)
    assert helped.returncode == 0 and {"search", "app"} <= set(re.findall(r"\w+", helped.stdout))
    out = tmp_path / "hits.json"
    query = ["search", "--text", "right pleural effusion", "-k", "3", "--json", str(out)]
    searched = subprocess.run([installed / "medxpert", *query], **run)
    assert searched.returncode == 0, searched.stderr
    hits = json.loads(out.read_text())
    assert [(hit["query"], hit["rank"]) for hit in hits] == [(query[2], rank) for rank in (1, 2, 3)]
    assert len({hit["study_id"] for hit in hits}) == 3


def dockerfile(name: str) -> dict[str, list[str]]:
    """A Dockerfile's instructions by keyword, continuation lines joined."""
    text = (ROOT / name).read_text().replace("\\\n", " ")
    instructions: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            instructions.setdefault(keyword, []).append(" ".join(rest.split()))
    return instructions


def test_both_images_serve_the_same_way_as_a_user_who_is_not_root():
    cpu, cuda = dockerfile("Dockerfile"), dockerfile("Dockerfile.cuda")
    for keyword in ("CMD", "HEALTHCHECK", "VOLUME", "USER", "EXPOSE"):
        assert cpu[keyword] == cuda[keyword], keyword
    assert cpu["USER"] == ["medxpert"]
    volumes = set(json.loads(cpu["VOLUME"][0]))
    environment = " ".join(cpu["ENV"])
    for variable in ("MODELS_DIR", "INDEXES_DIR", "DATA_DIR"):
        folder = environment.split(f"MEDXPERT_{variable}=")[1].split()[0]
        assert folder in volumes, variable


@pytest.mark.slow
def test_the_images_command_serves_and_passes_its_health_check(installed, make_workspace, tmp_path):
    """The image's CMD and HEALTHCHECK run outside a container (none can run on the development
    machine), with the installed wheel and the volumes' settings pointing at a tiny workspace."""
    instructions = dockerfile("Dockerfile")
    command = json.loads(instructions["CMD"][0])
    port = str(free_port())
    command[command.index("--port") + 1] = port
    health = instructions["HEALTHCHECK"][0].split(" CMD ", 1)[1].replace(":8000/", f":{port}/")
    environment = {
        **fresh_environment(),
        **make_workspace(tmp_path / "workspace"),
        "PATH": f"{installed}{os.pathsep}{os.environ['PATH']}",
        "MEDXPERT_API_KEY": "a-key-for-the-test",
    }

    def healthy() -> bool:
        return (
            subprocess.run(["bash", "-c", health], env=environment, capture_output=True).returncode
            == 0
        )

    assert not healthy()  # nothing listens yet
    log = tmp_path / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            command, cwd=tmp_path, env=environment, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while not healthy():
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the health check never passed"
            time.sleep(1)
        refused = subprocess.run(
            [installed / "medxpert", "serve", "--host", "0.0.0.0", "--port", port],
            env={**environment, "MEDXPERT_API_KEY": ""},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode != 0 and "MEDXPERT_API_KEY" in refused.stderr + refused.stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
