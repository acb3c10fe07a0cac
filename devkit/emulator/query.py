"""Eve's list queries over the emulator's documents: ``where``, ``sort``, ``projection``, pagination.

- ``where`` is a JSON object in MongoDB's query language, dot notation for nested fields (through
  lists too, as MongoDB does): equality, ``$eq $ne $gt $gte $lt $lte $in $nin $exists``, and
  ``$and $or $nor``. Dates compare as dates. Anything else (``$where``, ``$regex``, Eve's Python-style
  ``where=a=="b"``, a non-object) is a 400, as Eve answers a query it cannot run.
- ``sort`` is Eve's ``-field,other`` or its Python-literal form ``[("field", -1), ("other", 1)]``;
  the default is ``_created`` ascending (insertion order among equals). Values of different types
  sort in MongoDB's type order (missing, numbers, strings, objects, lists, booleans, dates).
- ``projection`` is a JSON object of top-level fields, all 1 (only these) or all 0 (all but these);
  the meta fields ``_id _created _updated _etag`` are always kept, as Eve keeps them.
- ``page`` from 1, ``max_results`` from 1, capped at 100 (default 25).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from devkit.emulator.validation import parse_rfc1123

MAX_RESULTS_LIMIT = 100
DEFAULT_MAX_RESULTS = 25
META_FIELDS = ("_id", "_created", "_updated", "_etag")
_COMPARISONS = ("$gt", "$gte", "$lt", "$lte")
_FIELD_OPERATORS = frozenset(("$eq", "$ne", "$in", "$nin", "$exists", *_COMPARISONS))
_LOGICAL = frozenset(("$and", "$or", "$nor"))
_MAX_DEPTH = 20

Document = Mapping[str, Any]


class QueryError(ValueError):
    """A query Eve would answer 400."""


@dataclass(frozen=True)
class ListQuery:
    where: Mapping[str, Any]
    sort: list[tuple[str, bool]]  # (field, descending)
    projection: Mapping[str, int] | None
    page: int
    max_results: int

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> ListQuery:
        where = _json_object(params.get("where"), "where")
        check_where(where)
        page = _positive_int(params.get("page", "1"), "page")
        max_results = _positive_int(params.get("max_results", str(DEFAULT_MAX_RESULTS)), "max_results")
        return cls(
            where,
            parse_sort(params.get("sort")),
            parse_projection(params.get("projection")),
            page,
            min(max_results, MAX_RESULTS_LIMIT),
        )

    def run(self, documents: Iterable[Document]) -> dict[str, Any]:
        """Eve's envelope: ``{"_items": [...], "_meta": {"total", "max_results", "page"}}``."""
        items = [document for document in documents if matches(document, self.where)]
        for field, descending in reversed(self.sort):
            items.sort(key=_sort_key(field), reverse=descending)
        start = (self.page - 1) * self.max_results
        return {
            "_items": [project(item, self.projection) for item in items[start : start + self.max_results]],
            "_meta": {"total": len(items), "max_results": self.max_results, "page": self.page},
        }


def parse_projection(text: str | None) -> dict[str, int] | None:
    if not text:
        return None
    projection = _json_object(text, "projection")
    values = list(projection.values())
    if any(value not in (0, 1) or isinstance(value, bool) for value in values) or len(set(values)) > 1:
        raise QueryError("projection values must be all 1 or all 0")
    return projection


def _json_object(text: str | None, name: str) -> dict[str, Any]:
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as error:
        raise QueryError(f"{name} is not valid JSON") from error
    if not isinstance(value, dict):
        raise QueryError(f"{name} must be a JSON object")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _positive_int(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise QueryError(f"{name} must be an integer") from error
    if value < 1:
        raise QueryError(f"{name} must be 1 or more")
    return value


def parse_sort(text: str | None) -> list[tuple[str, bool]]:
    if text is None or not text.strip():
        return [("_created", False)]
    if text.lstrip().startswith("["):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as error:
            raise QueryError("sort is not a list of (field, direction) pairs") from error
        if not isinstance(parsed, list | tuple):
            raise QueryError("sort is not a list of (field, direction) pairs")
        keys: list[tuple[str, bool]] = []
        for pair in parsed:
            if (
                not isinstance(pair, list | tuple)
                or len(pair) != 2
                or not isinstance(pair[0], str)
                or not pair[0]
                or pair[1] not in (1, -1)
                or isinstance(pair[1], bool)
            ):
                raise QueryError("sort is not a list of (field, direction) pairs")
            keys.append((pair[0], pair[1] == -1))
        return keys
    keys = []
    for part in text.split(","):
        part = part.strip()
        field = part.removeprefix("-")
        if not field:
            raise QueryError("sort names an empty field")
        keys.append((field, part.startswith("-")))
    return keys


def check_where(where: Mapping[str, Any], depth: int = 0) -> None:
    """Raise QueryError for operators the emulator (like Eve's blacklist) does not run."""
    if depth > _MAX_DEPTH:
        raise QueryError("where is nested too deeply")
    for key, value in where.items():
        if key in _LOGICAL:
            if not isinstance(value, list) or not all(isinstance(part, dict) for part in value):
                raise QueryError(f"{key} takes a list of queries")
            for part in value:
                check_where(part, depth + 1)
        elif key.startswith("$"):
            raise QueryError(f"operator {key} is not supported")
        elif _is_operator_dict(value):
            for operator, argument in value.items():
                if operator not in _FIELD_OPERATORS:
                    raise QueryError(f"operator {operator} is not supported")
                if operator in ("$in", "$nin") and not isinstance(argument, list):
                    raise QueryError(f"{operator} takes a list")


def _is_operator_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(str(key).startswith("$") for key in value)


def matches(document: Document, where: Mapping[str, Any]) -> bool:
    """MongoDB's semantics of ``where`` (already checked by ``check_where``) on one document."""
    for key, expected in where.items():
        if key == "$and":
            if not all(matches(document, part) for part in expected):
                return False
        elif key == "$or":
            if not any(matches(document, part) for part in expected):
                return False
        elif key == "$nor":
            if any(matches(document, part) for part in expected):
                return False
        elif not _field_matches(_values(document, key.split(".")), expected):
            return False
    return True


def _values(value: Any, path: list[str]) -> list[Any]:
    """Every value at ``path``, descending into lists as MongoDB does."""
    if not path:
        return [value]
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return _values(value[head], rest) if head in value else []
    if isinstance(value, list):
        found: list[Any] = []
        if head.isdigit() and int(head) < len(value):
            found.extend(_values(value[int(head)], rest))
        for item in value:
            if isinstance(item, dict):
                found.extend(_values(item, path))
        return found
    return []


def _candidates(values: list[Any]) -> list[Any]:
    """The values and, for lists, their elements (MongoDB matches either)."""
    out: list[Any] = []
    for value in values:
        out.append(value)
        if isinstance(value, list):
            out.extend(value)
    return out


def _field_matches(values: list[Any], expected: Any) -> bool:
    if not _is_operator_dict(expected):
        return any(_equal(value, expected) for value in _candidates(values))
    return all(_operator_matches(values, operator, argument) for operator, argument in expected.items())


def _operator_matches(values: list[Any], operator: str, argument: Any) -> bool:
    candidates = _candidates(values)
    if operator == "$eq":
        return any(_equal(value, argument) for value in candidates)
    if operator == "$ne":
        return not any(_equal(value, argument) for value in candidates)
    if operator == "$in":
        return any(_equal(value, option) for value in candidates for option in argument)
    if operator == "$nin":
        return not any(_equal(value, option) for value in candidates for option in argument)
    if operator == "$exists":
        return bool(values) == bool(argument)
    compare = _COMPARE[operator]
    return any((order := _order(value, argument)) is not None and compare(order) for value in candidates)


_COMPARE: dict[str, Callable[[int], bool]] = {
    "$gt": lambda order: order > 0,
    "$gte": lambda order: order >= 0,
    "$lt": lambda order: order < 0,
    "$lte": lambda order: order <= 0,
}


def _scalar(value: Any) -> tuple[str, Any]:
    """A value's MongoDB type bracket and a comparable form of it."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        moment = parse_rfc1123(value)
        return ("date", moment) if moment is not None else ("string", value)
    return ("other", json.dumps(value, sort_keys=True))


def _equal(value: Any, expected: Any) -> bool:
    kind, left = _scalar(value)
    other, right = _scalar(expected)
    return kind == other and bool(left == right)


def _order(value: Any, argument: Any) -> int | None:
    """-1, 0 or 1 comparing two values of the same bracket; None across brackets (no match)."""
    kind, left = _scalar(value)
    other, right = _scalar(argument)
    if kind != other or kind in ("other", "bool"):
        return None
    return int(left > right) - int(left < right)


_TYPE_RANK = {"missing": 0, "number": 1, "string": 2, "dict": 3, "list": 4, "bool": 5, "date": 6}


def _sort_key(field: str) -> Callable[[Document], tuple[int, Any]]:
    path = field.split(".")

    def key(document: Document) -> tuple[int, Any]:
        found = _values(document, path)
        if not found or found[0] is None:
            return (_TYPE_RANK["missing"], 0)
        kind, comparable = _scalar(found[0])
        if kind == "other":  # sorting tells objects from lists
            kind = "dict" if isinstance(found[0], dict) else "list"
        return (_TYPE_RANK[kind], comparable)

    return key


def project(document: Document, projection: Mapping[str, int] | None) -> dict[str, Any]:
    if not projection:
        return dict(document)
    fields = {name.split(".")[0] for name in projection}
    if 1 in projection.values():
        return {key: value for key, value in document.items() if key in fields or key in META_FIELDS}
    return {key: value for key, value in document.items() if key not in fields or key in META_FIELDS}
