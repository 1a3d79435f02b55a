"""`medxpert serve --workers N`: real worker processes on 127.0.0.1, each answering with its
process id in the X-MedXpert-Worker header, stopped cleanly."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from medxpert.api.server import CONFIG_VARIABLE, WORKER_HEADER, worker_app
from medxpert.cli import main
from medxpert.errors import ConfigError
from tests.builders import serve_process, wait_for_health

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, make_workspace) -> dict[str, str]:
    root = tmp_path_factory.mktemp("serve")
    return make_workspace(root)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def search(base: str, text: str) -> httpx.Response:
    """One request on its own connection, so that any worker may accept it."""
    return httpx.post(f"{base}/search", json={"text": text, "k": 3}, timeout=60)


def test_two_workers_answer_concurrent_requests_and_stop_cleanly(workspace):
    server, base = serve_process(workspace, "--workers", "2")
    workers: set[int] = set()
    try:
        wait_for_health(server, base)
        deadline = time.monotonic() + 40
        with ThreadPoolExecutor(8) as pool:
            while len(workers) < 2 and time.monotonic() < deadline:
                texts = [f"pleural effusion {i}" for i in range(16)]
                for answer in pool.map(lambda text: search(base, text), texts):
                    assert answer.status_code == 200 and len(answer.json()["hits"]) == 3
                    workers.add(int(answer.headers[WORKER_HEADER]))
        assert len(workers) == 2, f"only worker {workers} answered"
        assert {parent_of(pid) for pid in workers} == {server.pid}
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=30)[0]
    assert server.returncode == 0, output
    assert "Traceback" not in output and "Stopping parent process" in output
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the server"


def test_workers_must_be_positive_and_worker_app_needs_its_configuration(monkeypatch, capsys):
    assert main(["serve", "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    monkeypatch.delenv(CONFIG_VARIABLE, raising=False)
    with pytest.raises(ConfigError, match=CONFIG_VARIABLE):
        worker_app()
