"""The module map holds: what may import what (docs/architecture.md, "Module map")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_no_service_imports_another_service():
    for path in _files("services"):
        own = path.relative_to(ROOT / "services").parts[0]
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "services" or len(parts) < 2 or parts[1] == own:
                continue
            # The CLI is the composition root: it may reach a service's entry point only.
            allowed = own == "cli" and len(parts) >= 3 and parts[2] == "service"
            assert allowed, f"{path.relative_to(ROOT)} imports {name}"


def test_shared_code_never_reaches_up_into_services_or_the_dev_harness():
    for package in ("proto", "libs"):
        for path in _files(package):
            bad = {n for n in _imports(path) if n.split(".")[0] in ("services", "devkit", "tests")}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
    for path in _files("proto"):
        bad = {n for n in _imports(path) if n.split(".")[0] == "libs"}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_operator_runtime_never_imports_the_dev_harness():
    for path in _files("services"):
        bad = {n for n in _imports(path) if n.split(".")[0] in ("devkit", "tests")}
        # The one door: the CLI registers devkit's commands when devkit is installed.
        bad.discard("devkit")
        bad.discard("devkit.commands")
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_cli_runs_without_the_dev_harness(tmp_path):
    """An operator install has no devkit: `lantau` still works, minus dev commands."""
    for package in ("proto", "libs", "services"):
        (tmp_path / package).symlink_to(ROOT / package)
    proc = subprocess.run(
        [sys.executable, "-S", "-c", _WITHOUT_DEVKIT],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": f"{tmp_path}:{':'.join(p for p in sys.path if 'site-packages' in p)}"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "serve" in proc.stdout and "approve" in proc.stdout
    assert "bench" not in proc.stdout and " dev " not in proc.stdout


_WITHOUT_DEVKIT = """
import sys
from services.cli.main import parser
assert "devkit" not in sys.modules
help_text = parser().format_help()
print(help_text.replace(",", " "))
"""


def test_importing_the_client_registers_no_server_metrics():
    code = (
        "import prometheus_client, libs.client;"
        "names = [m.name for m in prometheus_client.REGISTRY.collect()];"
        "print(sorted(n for n in names if n.startswith('lantau')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == "[]", proc.stdout
