"""``validate FILE``: the service's verdict on each event of a file, without Kafka or Amili."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from service.cli import main
from service.domain.rules import TransformDefaults
from service.operator.validate import DEAD_LETTER, REJECTED, WOULD_REGISTER, check_events, summary

ACCOUNT = "674dbeaf08847b9501cc9132"
CREDITOR = "674dbeb208847b9501cc9138"
DEFAULTS = TransformDefaults()
SETTINGS = (
    "AMILI_DEFAULT_ACCOUNT",
    "AMILI_DEFAULT_CREDITOR",
    "ID_NUMBER_CHECK",
    "UNKNOWN_FIELDS",
    "MAX_EVENT_BYTES",
    "INVOICE_CREATED_TOPIC",
)


@pytest.fixture(autouse=True)
def _service_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's defaults, whatever the environment; a wide console so lines do not wrap."""
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "250")


@pytest.fixture
def person(sample_events: list[dict[str, Any]]) -> dict[str, Any]:
    """DEMO-1001: a person (Astrid Lindqvist) with a valid personnummer, registrable."""
    return copy.deepcopy(sample_events[0])


def changed(event: dict[str, Any], **data: Any) -> dict[str, Any]:
    copied = copy.deepcopy(event)
    copied["data"].update(data)
    return copied


def write_ndjson(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(event) + "\n" for event in events), encoding="utf-8")
    return path


def test_a_registrable_event_would_register_with_the_request_amili_would_get(person: dict[str, Any]) -> None:
    (checked,) = check_events([person], defaults=DEFAULTS)
    assert checked.outcome == WOULD_REGISTER
    assert (checked.index, checked.invoice_number, checked.creditor) == (1, "DEMO-1001", CREDITOR)
    assert checked.event_id == person["id"]
    assert checked.reasons == []
    assert checked.warnings == []
    request = checked.request
    assert request is not None
    assert request["invoice_number"] == "DEMO-1001"
    assert request["invoice_due_date"] == "Sun, 20 Dec 2026 00:00:00 GMT"  # the wire format
    assert request["matrix"][0]["unit_vat_percent"] == "25%"
    assert request["customer"]["is_person"] is True


def test_a_broken_business_rule_is_rejected_with_field_and_rule(person: dict[str, Any]) -> None:
    (checked,) = check_events([changed(person, currency="EUR")], defaults=DEFAULTS)
    assert checked.outcome == REJECTED
    assert checked.request is None
    assert checked.reasons == [
        {"field": "data.currency", "rule": "currency", "message": "only SEK is supported, not EUR"}
    ]


def test_a_schema_violation_is_rejected_naming_the_field(person: dict[str, Any]) -> None:
    event = copy.deepcopy(person)
    del event["data"]["due_date"]
    (checked,) = check_events([event], defaults=DEFAULTS)
    assert checked.outcome == REJECTED
    assert [(r["field"], r["rule"]) for r in checked.reasons] == [("data.due_date", "missing")]


def test_unknown_fields_are_ignored_and_named_or_rejected(person: dict[str, Any]) -> None:
    event = changed(person, colour="green")
    (ignored,) = check_events([event], defaults=DEFAULTS, unknown_fields="ignore")
    assert ignored.outcome == WOULD_REGISTER
    assert ignored.unknown_fields == ["data.colour"]
    assert "colour" not in json.dumps(ignored.request)
    (rejected,) = check_events([event], defaults=DEFAULTS, unknown_fields="reject")
    assert rejected.outcome == REJECTED
    assert [(r["field"], r["rule"]) for r in rejected.reasons] == [("data.colour", "extra_forbidden")]


def test_an_invalid_id_number_is_rejected_under_strict_and_a_warning_under_warn(
    person: dict[str, Any],
) -> None:
    event = copy.deepcopy(person)
    event["data"]["customer"]["id_number"] = "556789-1234"  # fails the personnummer check
    (strict,) = check_events([event], defaults=TransformDefaults(id_number_check="strict"))
    assert strict.outcome == REJECTED
    assert [(r["field"], r["rule"]) for r in strict.reasons] == [("data.customer.id_number", "personnummer")]
    (warned,) = check_events([event], defaults=TransformDefaults(id_number_check="warn"))
    assert warned.outcome == WOULD_REGISTER
    assert [(w["field"], w["rule"]) for w in warned.warnings] == [("data.customer.id_number", "personnummer")]
    assert warned.request is not None
    assert warned.request["customer"]["id_number"] == "556789-1234"
    (off,) = check_events([event], defaults=TransformDefaults(id_number_check="off"))
    assert (off.outcome, off.warnings) == (WOULD_REGISTER, [])


def test_defaults_fill_in_a_missing_account_and_creditor(person: dict[str, Any]) -> None:
    bare = copy.deepcopy(person)
    del bare["data"]["account"], bare["data"]["creditor"]
    (without,) = check_events([bare], defaults=DEFAULTS)
    assert without.outcome == REJECTED
    assert {r["field"] for r in without.reasons} == {"data.account", "data.creditor"}
    (with_defaults,) = check_events([bare], defaults=TransformDefaults(account=ACCOUNT, creditor=CREDITOR))
    assert with_defaults.outcome == WOULD_REGISTER
    assert with_defaults.creditor == CREDITOR
    assert with_defaults.request is not None
    assert (with_defaults.request["account"], with_defaults.request["creditor"]) == (ACCOUNT, CREDITOR)


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"type": "billing.invoice.updated.v1"}, "type"),
        ({"specversion": "0.3"}, "cloudevents_attributes"),
        ({"datacontenttype": "text/plain"}, "content_type"),
        ({"data": {"amount": 1}}, "data_schema"),
        ({"data": ["not", "an", "object"]}, "data_schema"),
    ],
)
def test_events_naming_no_invoice_would_be_dead_letters(
    person: dict[str, Any], change: dict[str, Any], rule: str
) -> None:
    event = {**copy.deepcopy(person), **change}
    (checked,) = check_events([event], defaults=DEFAULTS)
    assert checked.outcome == DEAD_LETTER
    assert checked.request is None
    assert [r["rule"] for r in checked.reasons] == [rule]
    assert checked.reasons[0]["field"] is None
    assert checked.reasons[0]["message"]


def test_a_record_over_max_event_bytes_would_be_a_too_large_dead_letter(person: dict[str, Any]) -> None:
    event = changed(person, headline="x" * 2000)
    (checked,) = check_events([event], defaults=DEFAULTS, max_event_bytes=1024)
    assert checked.outcome == DEAD_LETTER
    assert checked.invoice_number == "DEMO-1001"  # read from the file, for the operator
    assert [r["rule"] for r in checked.reasons] == ["too_large"]
    assert "MAX_EVENT_BYTES (1024)" in str(checked.reasons[0]["message"])


def test_summary_counts_each_outcome(person: dict[str, Any]) -> None:
    checked = check_events(
        [person, changed(person, currency="EUR"), {**person, "type": "x"}, person], defaults=DEFAULTS
    )
    assert [c.index for c in checked] == [1, 2, 3, 4]
    assert summary(checked) == "2 would register, 1 rejected, 1 dead letter"


# The command.


def test_the_table_shows_invoice_numbers_and_reasons_never_names_and_exits_1(
    tmp_path: Path, person: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_ndjson(tmp_path / "events.ndjson", [person, changed(person, currency="EUR")])
    assert main(["validate", str(file)]) == 1
    out = capsys.readouterr().out
    assert "DEMO-1001" in out
    assert "would-register" in out
    assert "rejected" in out
    assert "data.currency: currency: only SEK is supported, not EUR" in out
    assert "1 would register, 1 rejected" in out
    for personal in ("Astrid", "Lindqvist", "Storgatan", "811218-9876", "astrid.lindqvist@example.se"):
        assert personal not in out


def test_json_prints_each_verdict_with_the_wire_request_and_exits_0_when_all_register(
    tmp_path: Path, sample_events: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    registrable = [e for e in sample_events if e["data"]["invoice_number"] != "DEMO-1006"]
    file = tmp_path / "events.json"
    file.write_text(json.dumps(registrable), encoding="utf-8")  # a JSON array this time
    assert main(["validate", str(file), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["outcome"] for line in lines] == [WOULD_REGISTER] * len(registrable)
    assert lines[0]["request"]["customer"]["name"] == "Astrid Lindqvist"  # the operator's own file
    assert lines[0]["request"]["invoice_date"] == "Fri, 20 Nov 2026 00:00:00 GMT"


def test_a_bare_invoice_one_json_object_uses_the_settings_defaults(
    tmp_path: Path,
    person: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bare = copy.deepcopy(person["data"])
    del bare["account"], bare["creditor"]
    bare["customer"]["id_number"] = "556789-1234"
    file = tmp_path / "invoice.json"
    file.write_text(json.dumps(bare), encoding="utf-8")

    assert main(["validate", str(file), "--json"]) == 1  # no defaults, strict id numbers
    (refused,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["field"] for r in refused["reasons"]} == {
        "data.account",
        "data.creditor",
        "data.customer.id_number",
    }

    monkeypatch.setenv("AMILI_DEFAULT_ACCOUNT", ACCOUNT)
    monkeypatch.setenv("AMILI_DEFAULT_CREDITOR", CREDITOR)
    monkeypatch.setenv("ID_NUMBER_CHECK", "warn")
    assert main(["validate", str(file), "--json"]) == 0
    (registrable,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert registrable["outcome"] == WOULD_REGISTER
    assert registrable["request"]["creditor"] == CREDITOR
    assert [w["rule"] for w in registrable["warnings"]] == ["personnummer"]
    # The options win over the settings.
    assert main(["validate", str(file), "--json", "--id-number-check", "strict"]) == 1
    capsys.readouterr()


def test_unknown_fields_setting_and_option(
    tmp_path: Path,
    person: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    file = write_ndjson(tmp_path / "events.ndjson", [changed(person, colour="green")])
    assert main(["validate", str(file)]) == 0
    assert "ignored unknown field data.colour" in capsys.readouterr().out
    monkeypatch.setenv("UNKNOWN_FIELDS", "reject")
    assert main(["validate", str(file)]) == 1
    assert "data.colour: extra_forbidden" in capsys.readouterr().out
    assert main(["validate", str(file), "--unknown-fields", "ignore"]) == 0
    capsys.readouterr()


def test_dead_letters_are_shown_with_their_rule(
    tmp_path: Path, person: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_ndjson(tmp_path / "events.ndjson", [{**person, "type": "billing.invoice.updated.v1"}])
    assert main(["validate", str(file)]) == 1
    out = capsys.readouterr().out
    assert "dead-letter" in out
    assert "type: unknown event type" in out
    assert "1 dead letter" in out


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "cannot read"),
        ('{"a":', "is not JSON or NDJSON"),
        ("[1, 2]", "is not JSON or NDJSON"),
        ("", "holds no events"),
    ],
)
def test_a_file_it_cannot_use_is_one_line_and_exit_1(
    tmp_path: Path, content: str | None, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "events.json"
    if content is not None:
        file.write_text(content, encoding="utf-8")
    assert main(["validate", str(file)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("amili-registrar validate: ")
    assert said in captured.err
    assert captured.err.count("\n") == 1


def test_validate_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "--help"])
    assert exit_.value.code == 0
    assert "Exit code 0 if every event would be registered" in " ".join(capsys.readouterr().out.split())
