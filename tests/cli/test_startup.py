"""Every `lantau` command, and every SO ceremony step (one process each), starts without
loading what only transaction parsing needs; the services that parse load it at start."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
{setup}
assert 'eth_account' {op} sys.modules, sorted(m for m in sys.modules if m.startswith('eth'))
"""


def _run(setup: str, op: str) -> subprocess.CompletedProcess[str]:
    code = CHECK.format(setup=setup, op=op)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_the_cli_does_not_import_eth_account():
    # main.parser() imports every command module (the ceremonies' included).
    out = _run("from services.cli import main\nmain.parser()", "not in")
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("service", ["policy", "signer", "hsm_node"])
def test_services_that_parse_preload_it(service):
    # serve() calls chains.preload() before it takes any request.
    source = open(f"services/{service}/service.py").read()
    serve = source[source.index("async def serve(") :]
    body = serve[: serve.index("\n\n\n")] if "\n\n\n" in serve else serve
    assert "chains.preload()" in body
    out = _run("from libs import chains\nchains.preload()", "in")
    assert out.returncode == 0, out.stderr
