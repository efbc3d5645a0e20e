"""The house rules of the project's layout (issue 15), checked on the source so they stay true:
no import cycle among the project's modules (imports inside functions and string module paths
count), the layers (serving models never import the streamer, the engine no I/O library,
telephony no server internals), lazy imports only for heavy libraries and saying why, small files
and classes, one definition of the sample rate, every package in pyproject.toml, and cheap
``import emotion_monitor...``."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"streamer": "emotion_monitor.streamer", "models": "emotion_monitor.models"}
FOLDERS["web_dashboard"] = "emotion_monitor.web_dashboard"
MAX_FILE_LINES = 600
MAX_CLASS_LINES = 300
#: Libraries an import inside a function may load lazily: they cost seconds or load native code.
LAZY_ALLOWED = ("torch", "onnxruntime", "onnx", "transformers", "matplotlib", "sounddevice")
LAZY_ALLOWED += ("safetensors", "scipy", "ray")
IO_LIBRARIES = ("socket", "sounddevice", "soundfile", "websockets", "sqlite3", "subprocess")
IO_LIBRARIES += ("asyncio", "threading")


def _module_name(path: Path) -> str:
    folder = path.relative_to(ROOT).parts[0]
    parts = path.relative_to(ROOT / folder).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((FOLDERS[folder], *parts))


SOURCES = {_module_name(p): p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))}
TREES = {name: ast.parse(path.read_text()) for name, path in SOURCES.items()}


def _imports(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    """(module, node) of every import, ``importlib.import_module("...")`` and string constant
    that names one of the project's modules (a command table, for instance)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, node))
            # `from emotion_monitor.streamer.telephony import twilio` imports the submodule
            found += [(f"{node.module}.{a.name}", node) for a in node.names]
        elif isinstance(node, ast.Constant) and node.value in SOURCES:
            found.append((node.value, node))  # (an ancestor package is no edge: see _graph)
    return found


def _graph() -> dict[str, set[str]]:
    def edge(name: str, module: str, node: ast.AST) -> bool:
        # a string naming an ancestor package (importlib.resources.files("...")) imports
        # nothing new: the ancestor ran before this module did
        ancestor = name.startswith(module + ".") and isinstance(node, ast.Constant)
        return module in SOURCES and module != name and not ancestor

    return {
        name: {m for m, node in _imports(tree) if edge(name, m, node)}
        for name, tree in TREES.items()
    }


def _closure(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += graph[name]
    return seen


def test_the_graph_sees_string_and_function_level_imports():
    graph = _graph()
    assert "emotion_monitor.streamer.commands.serve" in graph["emotion_monitor.streamer.cli"]
    assert "emotion_monitor.models.registry" in graph["emotion_monitor.models"]


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_serving_models_never_import_the_streamer_or_training():
    for name, tree in TREES.items():
        if not name.startswith("emotion_monitor.models") or ".training" in name:
            continue
        for module, node in _imports(tree):
            where = f"{SOURCES[name]}:{node.lineno}"
            assert not module.startswith("emotion_monitor.streamer"), where
            assert not module.startswith("emotion_monitor.models.training"), where


def test_the_engine_imports_no_io_library_even_indirectly():
    for name in _closure("emotion_monitor.streamer.engine", _graph()):
        for module, node in _imports(TREES[name]):
            top = module.split(".")[0]
            assert top not in IO_LIBRARIES, f"{SOURCES[name]}:{node.lineno} imports {module}"


def test_telephony_providers_use_only_the_servers_route_types():
    for name, tree in TREES.items():
        if name.startswith("emotion_monitor.streamer.telephony"):
            for module, node in _imports(tree):
                if module.startswith("emotion_monitor.streamer.server"):
                    assert module.startswith("emotion_monitor.streamer.server.http"), (
                        f"{SOURCES[name]}:{node.lineno} imports server internals ({module})"
                    )


def _heavy(module: str) -> bool:
    """A heavy library, or one of the project's modules that imports one at its top level (the
    Whisper encoder's torch modules)."""
    if module.split(".")[0] in LAZY_ALLOWED:
        return True
    tree = TREES.get(module)
    return tree is not None and any(
        m.split(".")[0] in LAZY_ALLOWED
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for m, _ in _imports(node)
    )


def test_imports_inside_functions_are_heavy_libraries_that_say_why():
    for name, tree in TREES.items():
        lines = SOURCES[name].read_text().splitlines()
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, ast.Import | ast.ImportFrom):
                    continue
                where = f"{SOURCES[name]}:{node.lineno}"
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                modules += [node.module] if isinstance(node, ast.ImportFrom) else []
                assert all(_heavy(m) for m in modules), (
                    f"{where}: only heavy libraries ({', '.join(LAZY_ALLOWED)}) are imported "
                    "inside functions; import the rest at the top of the module"
                )
                span = lines[node.lineno - 2 : node.end_lineno]
                assert any("# lazy: " in line for line in span), f"{where}: say why (# lazy: ...)"


def test_files_and_classes_stay_small():
    for name, tree in TREES.items():
        path = SOURCES[name]
        assert len(path.read_text().splitlines()) <= MAX_FILE_LINES, f"{path}: too long"
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1
                assert size <= MAX_CLASS_LINES, f"{path}: class {node.name} has {size} lines"


def test_sample_rate_is_defined_once():
    defining = [
        SOURCES[name]
        for name, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "SAMPLE_RATE" for t in node.targets)
    ]
    assert defining == [ROOT / "models" / "base.py"]


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        _module_name(p.parent / "__init__.py")
        for f in FOLDERS
        for p in (ROOT / f).rglob("__init__.py")
    }
    assert on_disk == listed
    for folder in FOLDERS:  # a folder of Python files without __init__.py would be left out too
        for path in (ROOT / folder).rglob("*.py"):
            assert (path.parent / "__init__.py").exists(), f"{path.parent} has no __init__.py"


def test_importing_the_packages_stays_cheap():
    code = (
        "import sys, emotion_monitor.models, emotion_monitor.streamer\n"
        "heavy = ('torch', 'onnxruntime', 'transformers', 'matplotlib', 'sounddevice', "
        "'websockets')\n"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_module_names_in_docs_exist():
    """docs/architecture.md names modules by path; each must exist."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    for path in set(re.findall(r"`((?:streamer|models|web_dashboard)/[\w/]+\.py)`", text)):
        assert (ROOT / path).exists(), f"docs/architecture.md names {path}, which does not exist"
