"""The Dockerfile: hadolint-clean, and the properties the deployment relies on."""

from __future__ import annotations

import json
import re

from tests.ops.support import ROOT, run

DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    result = []
    for item in logical:
        keyword, _, rest = item.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_hadolint_reports_nothing(hadolint: str) -> None:
    result = run([hadolint, "--no-color", "--format", "json", str(DOCKERFILE)])
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_hadolint_ignores_are_justified() -> None:
    for number, line in enumerate(DOCKERFILE.read_text(encoding="utf-8").splitlines(), 1):
        match = re.search(r"hadolint\s+ignore=([A-Z0-9,]+)(.*)", line)
        if match:
            assert len(match.group(2).strip(" -:#")) >= 10, (
                f"line {number}: say why {match.group(1)} is ignored"
            )


def test_multi_stage_on_a_pinned_slim_python_311() -> None:
    instructions = _instructions()
    args = dict(rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest)
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(froms) >= 2, "builder and runtime stages"
    assert froms[0].endswith(" AS builder")
    for image in froms:
        reference = image.split()[0]
        reference = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], reference)
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-bookworm(@sha256:[0-9a-f]{64})?", reference), (
            reference
        )


def test_builder_installs_the_project_into_a_venv_that_the_runtime_copies() -> None:
    instructions = _instructions()
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "python -m venv /opt/venv" in runs
    assert "pip install ." in runs
    final = _final_stage()
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in final
    final_runs = " ".join(rest for keyword, rest in final if keyword == "RUN")
    assert "pip install" not in final_runs
    assert not re.search(r"\b(gcc|g\+\+|build-essential|clang|make)\b", final_runs), (
        "no compilers at run time"
    )


def test_runtime_stage_is_non_root_read_only_friendly_and_stops_on_sigterm() -> None:
    final = _final_stage()
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the runtime stage sets a USER"
    uid = users[-1].split(":")[0]
    args = dict(rest.split("=", 1) for keyword, rest in final if keyword == "ARG" and "=" in rest)
    uid = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], uid)
    assert uid.isdigit(), f"numeric UID, got {uid}"
    assert int(uid) >= 10000, f"non-root UID outside the system range, got {uid}"
    env = " ".join(rest for keyword, rest in final if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert ("STOPSIGNAL", "SIGTERM") in final
    assert ("EXPOSE", "8000") in final
    assert ("ENTRYPOINT", '["amili-registrar"]') in final
    assert ("CMD", '["run"]') in final


def test_dockerignore_sends_only_the_package_sources() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: everything is excluded first"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "service"}
    copies = [
        rest.split()[:-1] for keyword, rest in _instructions() if keyword == "COPY" and "--from" not in rest
    ]
    for source in (source for sources in copies for source in sources):
        assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"


def test_the_image_is_built_from_the_service_package_alone() -> None:
    """The image installs the project from pyproject.toml, README.md and service/ (the build context
    lets in nothing else: above): the development kit (devkit/) never reaches it."""
    sources = {
        source.rstrip("/")
        for keyword, rest in _instructions()
        if keyword == "COPY" and "--from" not in rest
        for source in rest.split()[:-1]
    }
    assert sources == {"pyproject.toml", "README.md", "service"}
    assert not [rest for _, rest in _instructions() if "devkit" in rest]
