"""The package's layout as a contract (docs/architecture.rst): no import circles, imports
only downwards between the sides of the pipeline, rooms of one job.

Read from the source with ``ast`` (nothing is imported), counting imports inside
functions too: a lazy import is still a dependency. Imports under ``if TYPE_CHECKING:``
are annotations only and do not count.
"""

from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

import pytest

from tests.relay_support import fresh_python

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "django_outbox"

#: The sides of the package, top first. A module may import its own side and the
#: sides below it; sides on one line are independent of each other.
LAYERS: list[set[str]] = [
    {"api", "apps"},
    {"urls", "management", "admin", "checks", "tasks", "testing"},
    {"relay", "consumer", "history"},
    {"publish"},
    {"kafka", "ops"},
    {"models"},
    {"core"},
]

#: The top-level modules every side may use: settings, errors, signals, the envelope
#: and the registry of handlers, the legacy column types, and the few shared channels.
CORE = {
    "backoff",
    "cloudevents",
    "compat",
    "conf",
    "envelope",
    "exceptions",
    "fields",
    "registry",
    "shutdown",
    "signals",
    "topics",
    "wakeup",
}

#: Longest class and function without a reason written next to it ("# long: why").
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 60

#: Rooms still too big when the layout moved (issue 17), being split: this list only
#: shrinks. Each entry is "module:name".
NOT_YET_SPLIT: set[str] = set()


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent)
        if "migrations" in relative.parts:
            continue
        parts = list(relative.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """The package's modules that module ``name`` imports (the submodule, for
    ``from package import submodule``)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            for child in getattr(node, "orelse", []):
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if not is_package:
                    base.pop()
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def side_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "api"
    if parts[1] in CORE:
        return "core"
    return parts[1]


def _level(side: str) -> int:
    for level, sides in enumerate(LAYERS):
        if side in sides:
            return level
    raise AssertionError(
        f"django_outbox.{side} belongs to no side of tests/test_architecture.py LAYERS "
        "(or CORE): place it there and in docs/architecture.rst"
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_cycle_finder_finds_a_circle_and_not_a_line():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_relative_absolute_and_lazy_imports():
    # Known edges of the package, one of each kind, so the reader cannot go blind.
    assert "django_outbox.models.outbox" in GRAPH["django_outbox.models.claiming"]
    assert "django_outbox.relay.send" in GRAPH["django_outbox.relay.loop"]
    assert "django_outbox.publish.write" in GRAPH["django_outbox"]  # inside __getattr__


def test_no_import_circles():
    found = cycles(GRAPH)
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_imports_go_down_the_layers_only():
    wrong = []
    for module, imported in sorted(GRAPH.items()):
        side = side_of(module)
        for other in sorted(imported):
            other_side = side_of(other)
            if other_side == side:
                continue
            if _level(other_side) <= _level(side):
                wrong.append(f"{module} ({side}) imports {other} ({other_side})")
    assert not wrong, "imports against docs/architecture.rst:\n" + "\n".join(wrong)


def test_only_the_kafka_package_imports_a_kafka_client():
    clients = {"kafka", "confluent_kafka"}
    wrong = []
    for module, path in MODULES.items():
        if side_of(module) == "kafka":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            wrong += [f"{module}: {n}" for n in names if n.split(".")[0] in clients]
    assert not wrong


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """The imports of ``tree``, lazy ones included, but not those under ``TYPE_CHECKING``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            for child in getattr(node, "orelse", []):
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


#: kafka-python's client classes; its exceptions and structs may be imported anywhere in
#: kafka/ (they are the vocabulary of both clients, librdkafka's errors translated to them).
KAFKA_PYTHON_CLIENTS = {"KafkaProducer", "KafkaConsumer", "KafkaAdminClient"}


def _clients_imported(path: pathlib.Path) -> set[str]:
    """``kafka-python`` when ``path`` imports one of its clients, ``confluent_kafka`` when
    it imports that at all (at run time)."""
    found = set()
    for node in _runtime_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level:
            root = (node.module or "").split(".")[0]
            names = {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            root, names = "", set()
            for alias in node.names:
                if alias.name.split(".")[0] == "confluent_kafka":
                    root = "confluent_kafka"
        else:
            continue
        if root == "kafka" and names & KAFKA_PYTHON_CLIENTS:
            found.add("kafka-python")
        if root == "confluent_kafka":
            found.add("confluent_kafka")
    return found


def test_each_kafka_client_is_built_in_its_own_module():
    """One module per client: kafka_python.py and confluent.py (docs/architecture.rst)."""
    homes = {
        "django_outbox.kafka.kafka_python": {"kafka-python"},
        "django_outbox.kafka.confluent": {"confluent_kafka"},
    }
    found = {
        module: clients
        for module, path in MODULES.items()
        if side_of(module) == "kafka" and (clients := _clients_imported(path))
    }
    assert found == homes


def test_code_outside_kafka_reaches_it_through_the_package_only():
    """``from django_outbox import kafka``, then ``kafka.NAME(...)`` at call time: never a
    module inside the package or a name taken from it, so that the package is the whole
    interface and a test's patch of ``kafka.NAME`` reaches every caller outside kafka/."""
    wrong = []
    for module, path in sorted(MODULES.items()):
        if side_of(module) == "kafka":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level:
                targets = [node.module or ""]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            wrong += [
                f"{module}: {target}"
                for target in targets
                if target == "django_outbox.kafka" or target.startswith("django_outbox.kafka.")
            ]
    assert not wrong, "import django_outbox.kafka as a package instead:\n" + "\n".join(wrong)
    assert any("django_outbox.kafka" in GRAPH[m] for m in GRAPH if side_of(m) == "relay")


def _long_without_reason(path: pathlib.Path) -> list[str]:
    lines = path.read_text().splitlines()
    found = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.ClassDef):
            limit = MAX_CLASS_LINES
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            limit = MAX_FUNCTION_LINES
        else:
            continue
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        length = (node.end_lineno or node.lineno) - first + 1
        if length <= limit:
            continue
        around = lines[max(first - 3, 0) : node.lineno]
        where = f"{path.relative_to(PACKAGE.parent)}:{node.name}"
        if not any("# long:" in line for line in around) and where not in NOT_YET_SPLIT:
            found.append(f"{where} (line {node.lineno}, {length} lines)")
    return found


def test_rooms_of_one_job():
    """No class over 250 lines, no function over 60, unless a "# long:" comment just above
    (or on) its definition says why."""
    found = [entry for path in sorted(MODULES.values()) for entry in _long_without_reason(path)]
    assert not found, "too long, with no reason given:\n" + "\n".join(found)


def test_the_list_of_rooms_not_yet_split_only_shrinks():
    long_now = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if (node.end_lineno or node.lineno) - first + 1 > limit:
                    long_now.add(f"{path.relative_to(PACKAGE.parent)}:{node.name}")
    assert not NOT_YET_SPLIT - long_now, "split already: remove from NOT_YET_SPLIT"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_says_what_it_owns(module):
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    if path.name == "__init__.py" and not tree.body:
        return  # the empty markers of management/ and management/commands/
    assert ast.get_docstring(tree), f"{path}: a module docstring saying what it owns"


def test_the_public_names_stay_where_the_readme_shows_them():
    import django_outbox

    assert {"publish_event", "handler", "Event"} <= set(django_outbox.__all__)
    assert callable(django_outbox.publish_event) and callable(django_outbox.handler)
    assert django_outbox.Event.__name__ == "Event"


def test_each_side_is_one_package_or_a_core_module():
    by_side = defaultdict(list)
    for module in MODULES:
        by_side[side_of(module)].append(module)
    unknown = {side for side in by_side if not any(side in sides for sides in LAYERS)}
    assert not unknown, f"modules outside any side: {sorted(unknown)}"


def test_a_web_process_does_not_load_the_kafka_client():
    """``django.setup()`` of the demo project (admin, journey page, consumer.inbox) imports
    no Kafka client: only the workers, the replay and the checks that reach Kafka do."""
    script = (
        "import sys, django; django.setup(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kafka', 'confluent_kafka')"
        " or m in ('django_outbox.kafka', 'django_outbox.consumer.loop')))"
    )
    assert fresh_python(script, "testproject.settings") == "[]"
