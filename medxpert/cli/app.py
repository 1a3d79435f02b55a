"""`medxpert app`: the Streamlit UI (medxpert/app) on http://HOST:PORT; see docs/app.md."""

from __future__ import annotations

import argparse

from medxpert.cli.common import add_listen_arguments
from medxpert.config import is_loopback
from medxpert.errors import ConfigError


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "app",
        help="serve the Streamlit UI (search and report)",
        description="Serve the Streamlit UI on http://HOST:PORT. It binds to 127.0.0.1 by "
        "default. The UI has no login: another host needs --trusted-network (a network you "
        "trust, or behind a proxy that authenticates). Libraries and models are found as "
        "MEDXPERT_INDEXES_DIR and MEDXPERT_MODELS_DIR say.",
    )
    add_listen_arguments(parser, 8501)
    parser.add_argument(
        "--trusted-network",
        action="store_true",
        help="allow a non-loopback --host (anyone who can reach it can use the UI)",
    )
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    import importlib.util
    import os

    from medxpert.app import streamlit_command

    if not is_loopback(args.host) and not args.trusted_network:
        raise ConfigError(
            f"refusing to serve the UI on {args.host}: it has no login, so anyone who can "
            "reach that address could query the case library. Bind to 127.0.0.1, or pass "
            "--trusted-network if the network is trusted (or a proxy authenticates)."
        )
    if importlib.util.find_spec("streamlit") is None:
        raise ConfigError('the UI needs Streamlit: pip install "medxpert[app]".')
    print(f"MedXpert UI on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    command = streamlit_command(args.host, args.port)
    os.execv(command[0], command)  # Streamlit takes this process (and its signals: PID 1)
