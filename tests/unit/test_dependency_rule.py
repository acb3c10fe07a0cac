"""The dependency rule of the service package (docs/architecture.md): a module imports modules of its
own layer and of the layers below it, never of a layer above.

Checked on the source, without importing anything: every ``import`` and ``from ... import`` of the
package, absolute or relative, at the top of a module, inside a function or under
``TYPE_CHECKING`` (a type-only import is a dependency of the reader all the same).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "service"
ARCHITECTURE_DOC = ROOT / "docs" / "architecture.md"


@dataclass(frozen=True, slots=True)
class Layer:
    name: str
    members: tuple[str, ...]
    """Packages (with everything below them) and modules; the longest that names a module wins."""


LAYERS: tuple[Layer, ...] = (
    # The package's own ``__init__`` runs before any of its modules, so it is innermost (see below).
    Layer("domain", ("service.domain",)),
    Layer("contracts", ("service.events",)),
    Layer(
        "building blocks",
        ("service.amili", "service.ports", "service.circuit", "service.flow", "service.ledger"),
    ),
    Layer("use cases", ("service.registration", "service.processing")),
    Layer("edges", ("service.amili.auth", "service.amili.client", "service.kafka", "service.config")),
    Layer("ops", ("service.ops",)),
    Layer("composition root", ("service.bootstrap",)),
    Layer("entry points", ("service.cli", "service.__main__", "service.operator", "service.examples")),
)
"""Innermost first."""

KNOWN_EXCEPTIONS: dict[str, str] = {}
"""Modules allowed to break the rule, and why; each must still break it (or it leaves the list).
None today: keep it so."""

DEVKIT = "devkit"
DEVKIT_HOOK = "service.cli"
"""The one module that may import the development kit: lazily, to add its commands when it is
installed (the image has none of it)."""


@dataclass(frozen=True, slots=True)
class Import:
    line: int
    statement: str
    """As written (one name of it), for the message."""
    target: str
    """The module of ours it imports."""


def layer_of(module: str) -> int | None:
    """The index in ``LAYERS`` of ``module``'s layer; ``None`` when it is placed in none."""
    if module == PACKAGE:
        return 0  # imported before any of its modules: it may import nothing of ours
    placed = [
        (len(member), index)
        for index, layer in enumerate(LAYERS)
        for member in layer.members
        if module == member or module.startswith(f"{member}.")
    ]
    return max(placed)[1] if placed else None


def _ours(module: str) -> bool:
    return module == PACKAGE or module.startswith(f"{PACKAGE}.")


@cache
def module_files() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name)."""
    modules: dict[str, Path] = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imports_of(module: str, source: str, *, is_package: bool, known: set[str]) -> Iterator[Import]:
    """Every import of the package in ``source``, the module ``module``. ``from a import b`` imports
    the module ``a.b`` when there is one (``known``), else the module ``a``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _ours(alias.name):
                    yield Import(node.lineno, f"import {alias.name}", alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # one dot: this package; each further dot: one package up
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            if not _ours(base):
                continue
            written = f"from {'.' * node.level}{node.module or ''} import"
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                target = candidate if candidate in known else base
                yield Import(node.lineno, f"{written} {alias.name}", target)


def upward_imports(
    module: str, source: str, *, shown_as: str, is_package: bool = False, known: set[str] | None = None
) -> list[str]:
    """Each import in ``source`` that breaks the rule, as ``file:line: what is wrong``."""
    known = set(module_files()) if known is None else known
    own = layer_of(module)
    assert own is not None, f"{shown_as}: {module} is placed in no layer"
    problems: list[str] = []
    found_imports = imports_of(module, source, is_package=is_package, known=known)
    for found in sorted(found_imports, key=lambda found: found.line):
        target = layer_of(found.target)
        if target is None:
            problems.append(
                f"{shown_as}:{found.line}: `{found.statement}` imports {found.target}, in no layer"
            )
        elif target > own:
            problems.append(
                f"{shown_as}:{found.line}: `{found.statement}` imports {found.target} "
                f"(layer {LAYERS[target].name!r}), above {module}'s layer {LAYERS[own].name!r}"
            )
    return problems


def _checked() -> dict[str, Path]:
    return dict(module_files())


def _problems(module: str, path: Path) -> list[str]:
    return upward_imports(
        module,
        path.read_text(encoding="utf-8"),
        shown_as=str(path.relative_to(ROOT)),
        is_package=path.name == "__init__.py",
    )


def test_every_module_of_the_service_is_placed_in_a_layer() -> None:
    unplaced = sorted(name for name in _checked() if layer_of(name) is None)
    assert not unplaced, f"place these in LAYERS and in docs/architecture.md: {unplaced}"


def test_no_module_imports_a_layer_above_its_own() -> None:
    problems = [
        problem
        for module, path in _checked().items()
        if module not in KNOWN_EXCEPTIONS
        for problem in _problems(module, path)
    ]
    assert not problems, "imports that run up the layers (docs/architecture.md):\n" + "\n".join(problems)


def test_each_known_exception_still_breaks_the_rule() -> None:
    for module in KNOWN_EXCEPTIONS:
        path = module_files().get(module)
        assert path is not None, f"{module} is gone: remove it from KNOWN_EXCEPTIONS"
        assert _problems(module, path), f"{module} keeps to the rule now: remove it from KNOWN_EXCEPTIONS"


def devkit_imports(source: str) -> list[tuple[int, bool]]:
    """Each import of the development kit in ``source``: its line, and whether it sits inside a
    function (run only when called) rather than at the module's top."""
    tree = ast.parse(source)
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            inside.update(id(child) for child in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name == DEVKIT or name.startswith(f"{DEVKIT}.") for name in names):
            found.append((node.lineno, id(node) in inside))
    return found


def test_the_service_imports_the_development_kit_only_from_its_command_hook() -> None:
    offending = [
        f"{path.relative_to(ROOT)}:{line}"
        for module, path in module_files().items()
        for line, lazily in devkit_imports(path.read_text(encoding="utf-8"))
        if module != DEVKIT_HOOK or not lazily
    ]
    assert offending == [], f"the service imports the development kit: {offending}"
    hook = module_files()[DEVKIT_HOOK].read_text(encoding="utf-8")
    assert [lazily for _, lazily in devkit_imports(hook)] == [True]  # the check sees the hook
    assert devkit_imports("import devkit.emulator\n") == [(1, False)]


WRONG = """\
from typing import TYPE_CHECKING

from service.domain.outcomes import Outcome
from service.amili import models

if TYPE_CHECKING:
    from service.kafka.engine import ConsumptionEngine


def late() -> None:
    import service.bootstrap
    from ..ports import AmiliPort
    from . import invoice
"""


def test_a_deliberately_wrong_import_is_named_with_its_module_and_line() -> None:
    problems = upward_imports("service.domain.rules", WRONG, shown_as="service/domain/rules.py")
    assert problems == [
        "service/domain/rules.py:4: `from service.amili import models` imports service.amili.models "
        "(layer 'building blocks'), above service.domain.rules's layer 'domain'",
        "service/domain/rules.py:7: `from service.kafka.engine import ConsumptionEngine` imports "
        "service.kafka.engine (layer 'edges'), above service.domain.rules's layer 'domain'",
        "service/domain/rules.py:11: `import service.bootstrap` imports service.bootstrap "
        "(layer 'composition root'), above service.domain.rules's layer 'domain'",
        "service/domain/rules.py:12: `from ..ports import AmiliPort` imports service.ports "
        "(layer 'building blocks'), above service.domain.rules's layer 'domain'",
    ]


def test_imports_of_the_same_layer_or_below_keep_to_the_rule() -> None:
    same_or_below = (
        "from service.domain import invoice\nfrom .events import contract\nimport service.flow.fair\n"
    )
    assert upward_imports("service.ports", same_or_below, shown_as="service/ports.py") == []
    relative = "from ..domain.invoice import Invoice\n"
    assert upward_imports("service.events.contract", relative, shown_as="service/events/contract.py") == []


def test_the_architecture_doc_places_every_module_as_the_rule_does() -> None:
    """docs/architecture.md has one line per module, naming its layer; it must say what the rule
    checks. Package ``__init__`` modules and the known exceptions have no line of their own."""
    rows = re.findall(r"^\| `(service/[\w/]+\.py)` \| ([\w ]+) \|", ARCHITECTURE_DOC.read_text(), re.M)
    documented = {path: layer.strip() for path, layer in rows}
    expected: dict[str, str] = {}
    for module, path in _checked().items():
        layer = layer_of(module)
        if path.name != "__init__.py" and module not in KNOWN_EXCEPTIONS and layer is not None:
            expected[str(path.relative_to(ROOT))] = LAYERS[layer].name
    assert documented == expected


def _top_level_imports(source: str) -> set[str]:
    """The first name of every absolute import in ``source``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def test_the_development_kit_never_imports_the_benchmarks() -> None:
    """The benchmarks build on the development kit (its harness), not the other way round: the kit
    is installed, ``bench/`` runs only from a checkout."""
    offending = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / DEVKIT).rglob("*.py"))
        if "bench" in _top_level_imports(path.read_text(encoding="utf-8"))
    ]
    assert offending == []
    assert _top_level_imports("from bench.measure import ResultCollector\n") == {"bench"}
