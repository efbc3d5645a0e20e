"""The layout rules of ``models/`` (issue 15), checked on the source so they stay true:
no import cycle among its modules (imports inside functions count), serving code never imports
the streamer, imports inside functions say why they are lazy, files and classes stay small, and
``import emotion_monitor.models`` stays free of torch and onnxruntime."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

MODELS = Path(__file__).resolve().parents[1] / "models"
PACKAGE = "emotion_monitor.models"
MAX_FILE_LINES = 600
MAX_CLASS_LINES = 300


def _module_name(path: Path) -> str:
    parts = path.relative_to(MODELS).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


SOURCES = {_module_name(p): p for p in sorted(MODELS.rglob("*.py"))}


def _imports(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    """(imported module, node) of every import statement and importlib.import_module("...")."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, node))
            # `from emotion_monitor.models.encoders import whisper` imports the submodule
            found += [(f"{node.module}.{a.name}", node) for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.append((node.args[0].value, node))
    return found


def _function_level(tree: ast.AST) -> list[ast.AST]:
    nodes = []
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            nodes += [n for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)]
    return nodes


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in SOURCES.items():
        targets = {m for m, _ in _imports(ast.parse(path.read_text())) if m in SOURCES}
        # importing a submodule runs its parent package first; that is no edge of the source
        graph[name] = {t for t in targets if t != name}
    return graph


def test_no_import_cycle_among_models_modules():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_serving_code_never_imports_the_streamer_or_training():
    for name, path in SOURCES.items():
        if name.startswith(f"{PACKAGE}.training"):
            continue
        for module, node in _imports(ast.parse(path.read_text())):
            assert not module.startswith("emotion_monitor.streamer"), f"{path}:{node.lineno}"
            assert not module.startswith(f"{PACKAGE}.training"), f"{path}:{node.lineno}"


def test_imports_inside_functions_say_why_they_are_lazy():
    for path in SOURCES.values():
        text = path.read_text()
        lines = text.splitlines()
        for node in _function_level(ast.parse(text)):
            span = lines[node.lineno - 1 : node.end_lineno]
            assert any("# lazy: " in line for line in span), (
                f"{path}:{node.lineno}: an import inside a function needs a `# lazy: why` comment"
            )


def test_files_and_classes_stay_small():
    for path in SOURCES.values():
        text = path.read_text()
        assert len(text.splitlines()) <= MAX_FILE_LINES, f"{path}: over {MAX_FILE_LINES} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1
                assert size <= MAX_CLASS_LINES, f"{path}: class {node.name} has {size} lines"


def test_sample_rate_is_defined_once():
    defining = [
        p
        for p in SOURCES.values()
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "SAMPLE_RATE" for t in node.targets)
    ]
    assert defining == [MODELS / "base.py"]


def test_importing_the_package_stays_cheap():
    code = (
        "import sys, emotion_monitor.models\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'transformers', 'matplotlib') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
