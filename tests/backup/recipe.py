"""The recovery code of docs/backup-quorum.md, loaded from the page itself."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[2] / "docs" / "backup-quorum.md"


@cache
def recipe() -> dict[str, Any]:
    code = re.search(r"## Recovering without Lantau.*?```python\n(.*?)```", DOC.read_text(), re.S)
    assert code, "the recovery recipe is missing from docs/backup-quorum.md"
    namespace: dict[str, Any] = {"__name__": "recipe"}
    exec(compile(code.group(1), str(DOC), "exec"), namespace)
    return namespace
