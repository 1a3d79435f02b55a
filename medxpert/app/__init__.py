"""The Streamlit UI, shipped with the package: `medxpert app` (or `./dev.sh app`) serves it.

`streamlit_command` is the one way it is started (the CLI, dev.sh, the container and the
browser test); importing this module loads neither Streamlit nor the pipeline.
"""

from __future__ import annotations

import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parent / "app.py"


def streamlit_command(host: str = "127.0.0.1", port: int = 8501) -> list[str]:
    """`streamlit run` of the page on `host`:`port`, headless, without usage statistics."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(PAGE),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
