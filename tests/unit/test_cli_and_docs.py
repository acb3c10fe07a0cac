from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from devkit.emulator.settings import EmulatorSettings
from devkit.localkafka import free_port
from service.cli import DEVELOPMENT_COMMANDS, build_parser, main
from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "argv",
    [[], ["run"], ["emulator"], ["kafka"], ["produce"], ["demo"], ["chaos"]],
)
def test_every_subcommand_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*argv, "--help"])
    assert exit_.value.code == 0
    assert "usage: amili-registrar" in capsys.readouterr().out


def test_python_dash_m_service_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert "demo" in done.stdout


def test_run_without_an_api_key_says_which_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AMILI_API_KEY", raising=False)
    assert main(["run"]) == 2
    assert "AMILI_API_KEY is not set" in capsys.readouterr().err


@pytest.mark.parametrize(("lease", "refused"), [("5", True), ("90", True), ("91", False)])
def test_a_lease_shorter_than_an_attempt_at_amili_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], lease: str, refused: bool
) -> None:
    """A look-up and a POST may each take AMILI_TOTAL_TIMEOUT_SECONDS (45): a lease of 90 s or less
    could lapse while a POST is still open at Amili."""
    from service.bootstrap import ConfigurationError, build_registrar
    from service.config import Settings

    monkeypatch.setenv("AMILI_API_KEY", "k")
    monkeypatch.setenv("CLAIM_LEASE_SECONDS", lease)
    if not refused:
        build_registrar(Settings())  # builds (connects to nothing until started)
        return
    with pytest.raises(ConfigurationError):
        build_registrar(Settings())
    assert main(["run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"amili-registrar: CLAIM_LEASE_SECONDS ({lease}) must be longer"), err
    assert "AMILI_TOTAL_TIMEOUT_SECONDS" in err


def test_the_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", readme, re.M))
    expected = {name.upper() for name in Settings.model_fields}
    expected |= {f"AMILI_EMULATOR_{name.upper()}" for name in EmulatorSettings.model_fields}
    assert expected <= documented, expected - documented


def test_the_readme_module_map_has_one_line_for_every_module_and_none_for_a_module_gone() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Architecture") :]
    mapped = re.findall(r"^\| `((?:service|devkit|bench)/[\w/]+\.py)` \|", section, re.M)
    assert len(mapped) == len(set(mapped)), "a module has two lines"
    modules = {
        str(path.relative_to(ROOT))
        for tree in ("service", "devkit", "bench")
        for path in (ROOT / tree).rglob("*.py")
        if path.name != "__init__.py"
    }
    assert set(mapped) == modules


def test_the_readme_quick_start_has_exactly_two_commands_and_ci_runs_the_second() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Quick start\s*$(.*?)(?=^## )", readme, re.S | re.M)
    assert section is not None
    blocks = [block.strip() for block in re.findall(r"```[^\n]*\n(.*?)```", section.group(1), re.S)]
    assert len(blocks) == 2
    assert blocks[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def _produce(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "produce", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LOG_LEVEL": "INFO"},
    )


def test_produce_says_in_one_line_what_went_wrong(tmp_path: Path) -> None:
    missing = _produce(str(tmp_path / "nope.json"))
    assert (missing.returncode, missing.stderr.strip().count("\n")) == (1, 0), missing.stderr
    assert "cannot read" in missing.stderr
    assert "No such file" in missing.stderr

    bad = tmp_path / "bad.json"
    bad.write_text('{"a":')
    broken = _produce(str(bad))
    assert (broken.returncode, broken.stderr.strip().count("\n")) == (1, 0), broken.stderr
    assert "is not JSON or NDJSON" in broken.stderr

    away = _produce(str(ROOT / "service/examples/invoices.ndjson"), "--bootstrap", f"127.0.0.1:{free_port()}")
    assert (away.returncode, away.stderr.strip().count("\n")) == (1, 0), away.stderr
    assert "did not take the events" in away.stderr
    assert "Traceback" not in missing.stderr + broken.stderr + away.stderr


@pytest.fixture
def without_devkit(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in the image: the development kit cannot be imported."""
    monkeypatch.setitem(sys.modules, "devkit", None)
    monkeypatch.setitem(sys.modules, "devkit.cli", None)


@pytest.mark.usefixtures("without_devkit")
@pytest.mark.parametrize(
    "argv",
    [
        ["emulator"],
        ["kafka", "start"],
        ["produce", "events.ndjson", "--binary"],
        ["demo"],
        ["chaos", "--invoices", "5"],
        ["chaos", "--help"],
    ],
)
def test_a_development_command_without_devkit_says_so_in_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(f"amili-registrar {argv[0]}: a development command, not installed")


@pytest.mark.usefixtures("without_devkit")
def test_without_devkit_the_help_lists_only_what_the_image_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    listed = capsys.readouterr().out
    assert "run the service" in listed
    assert "invoice" in listed
    for command in DEVELOPMENT_COMMANDS:
        assert f"    {command} " not in listed, command


@pytest.mark.usefixtures("without_devkit")
def test_without_devkit_the_service_commands_still_refuse_unknown_arguments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--invoices", "5"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --invoices 5" in capsys.readouterr().err


def test_the_service_names_the_development_commands_devkit_registers() -> None:
    from devkit.cli import COMMANDS

    assert COMMANDS == DEVELOPMENT_COMMANDS  # each has its help: test_every_subcommand_has_help
