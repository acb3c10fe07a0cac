"""Helpers of the ops tests: where the tools are, running them, loading YAML.

The tools come from ``scripts/ops-tools.sh``: helm in ``.cache/tools/bin``, promtool on PATH (Debian's
``prometheus`` package), hadolint and kubernetes-validate in the virtualenv. A test whose tool is
missing skips with the reason, or fails when ``CI=true``.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

from tests.ci import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".cache" / "tools" / "bin"
CHART = ROOT / "helm" / "amili-registrar"
DEPLOY = ROOT / "deploy"
INSTALL_HINT = "run scripts/ops-tools.sh"


def unavailable(reason: str) -> NoReturn:
    """Skip the calling test, or fail it under CI (where nothing may be missing)."""
    skip_or_fail(
        f"{reason}; {INSTALL_HINT}",
        ci_reason=f"{reason} (CI=true: a missing tool fails the test; {INSTALL_HINT})",
    )


def find_tool(name: str) -> str:
    """The tool's path: .cache/tools/bin first, then the virtualenv's bin, then PATH."""
    for directory in (TOOLS_BIN, Path(sys.executable).parent):
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        unavailable(f"{name} not found in {TOOLS_BIN.relative_to(ROOT)}, the virtualenv or PATH")
    return found


def import_optional(module: str, package: str) -> ModuleType:
    """A module that the ops tools install (no type stubs needed: its attributes are Any)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        unavailable(f"Python package {package} is not installed")


def run(args: Sequence[str], *, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def load_yaml_documents(text: str) -> list[dict[str, Any]]:
    yaml = import_optional("yaml", "PyYAML")
    return [doc for doc in yaml.safe_load_all(text) if doc]


def load_yaml(path: Path) -> Any:
    yaml = import_optional("yaml", "PyYAML")
    return yaml.safe_load(path.read_text(encoding="utf-8"))
