"""The service's wheel holds the service alone: none of the development kit (``devkit/``: the Amili
emulator, the local broker, chaos, demo, produce, the schema generator) reaches the image, which
installs this wheel (the Dockerfile's own copy list is checked in ``test_dockerfile.py``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.ops.support import ROOT

# Where the development tools lived in the service package before they moved to devkit/: none of
# it may come back.
MOVED_OUT_OF_SERVICE = tuple(
    f"service/{place}" for place in ("emulator/", "localkafka/", "devtools/", "events/schemas.py")
)
# Not sources: never copied into the tree the wheel is built from (a stale build/ would put files
# into the wheel that the sources no longer hold).
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".kafka",
    ".cache",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "node_modules",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel ``pip wheel --no-deps .`` builds from a copy of the project."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "project"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    # The virtualenv's setuptools (the test extra) builds it: no package index needed.
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet"]
    built = subprocess.run(
        [*command, "--wheel-dir", str(work / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (path,) = (work / "dist").glob("amili_registrar-*.whl")
    return zipfile.ZipFile(path)


def _metadata_dir(wheel: zipfile.ZipFile) -> str:
    (name,) = {
        file.split("/", 1)[0] for file in wheel.namelist() if file.split("/", 1)[0].endswith(".dist-info")
    }
    return name + "/"


def test_the_wheel_holds_the_service_package_and_its_metadata_only(wheel: zipfile.ZipFile) -> None:
    files = wheel.namelist()
    outside = [file for file in files if not file.startswith(("service/", _metadata_dir(wheel)))]
    assert outside == [], f"the wheel holds files outside service/: {outside}"
    assert {"service/__init__.py", "service/cli.py", "service/py.typed"} <= set(files)
    assert "service/examples/invoices.ndjson" in files  # the samples `validate` and the README use


def test_the_wheel_holds_none_of_the_development_tools(wheel: zipfile.ZipFile) -> None:
    files = wheel.namelist()
    moved = [file for file in files if file.startswith(MOVED_OUT_OF_SERVICE)]
    assert moved == [], f"development tools in the production wheel: {moved}"
    assert [file for file in files if file.startswith("devkit/")] == []


def test_the_wheel_keeps_the_console_command(wheel: zipfile.ZipFile) -> None:
    entry_points = wheel.read(f"{_metadata_dir(wheel)}entry_points.txt").decode()
    assert "amili-registrar = service.cli:main" in entry_points
