"""The client is HTTP only: importing it (and the schemas it shares with the server) loads no server stack."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# What a notebook that only talks to a server must not pay for.
SERVER_ONLY = ("sqlalchemy", "alembic", "torch", "torchvision", "numpy", "PIL", "fastapi", "starlette", "matplotlib")


@pytest.mark.parametrize("module", ["service.client", "service.schemas", "service.errors"])
def test_importing_the_client_loads_no_server_package(module: str) -> None:
    script = (
        f"import json, sys; import {module}; print(json.dumps(sorted({{name.split('.')[0] for name in sys.modules}})))"
    )
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    )
    assert "httpx" in loaded or module != "service.client"  # the probe sees the client's own imports
    assert sorted(set(SERVER_ONLY) & set(loaded)) == []


def test_the_client_module_names_what_it_exports() -> None:
    import service.client

    assert {"Client", "NotFound", "InvalidRequest", "ServerUnreachable"} <= set(service.client.__all__)
