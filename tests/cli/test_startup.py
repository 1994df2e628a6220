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


def test_a_ceremony_step_process_loads_neither_the_cli_nor_the_bus():
    code = (
        "import sys, services.cli.ceremony_step\n"
        "heavy = {'nats', 'eth_account', 'services.cli.main', 'aiohttp'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_a_ceremony_step_that_cannot_run_says_why_in_one_line(tmp_path):
    config = tmp_path / "lantau.toml"
    config.write_text("")
    argv = [sys.executable, "-m", "services.cli.ceremony_step", "has", "--config", str(config)]
    out = subprocess.run(
        [*argv, "--node", "hsm-9", "--so-pin-file", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "hsm-9" in out.stderr, out.stderr


def test_a_wrong_so_pin_is_refused_by_the_token_and_never_echoed(tmp_path):
    """Whoever runs a step with a guessed SO PIN learns that the token refused, not the
    PIN: neither the guess nor the real PIN reaches stderr or stdout."""
    from devkit.softhsm import find_module, init_token
    from libs import config as config_mod
    from libs.config import Config, HsmNodeConfig
    from libs.secret_files import write_secret

    token = init_token(tmp_path, "lantau-step")
    node = HsmNodeConfig(
        id="hsm-1",
        module=find_module(),
        token_label=token.label,
        pin_file=str(token.pin_file),
        softhsm_conf=str(token.conf_path),
    )
    config = tmp_path / "lantau.toml"
    config.write_text(config_mod.dump(Config(hsm_nodes=[node])))
    guess = tmp_path / "guess.so-pin"
    write_secret(guess, "guessed-pin-4711\n")
    argv = [sys.executable, "-m", "services.cli.ceremony_step", "has", "--config", str(config)]
    out = subprocess.run(
        [*argv, "--node", "hsm-1", "--so-pin-file", str(guess)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    print(out.stderr)
    assert out.returncode == 2 and out.stdout == ""
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    real = token.so_pin_file.read_text().strip()
    assert "guessed-pin-4711" not in out.stderr and real not in out.stderr
