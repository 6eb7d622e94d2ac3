"""Imports run downwards only (README, "Layout of the code"), and `--help` stays light."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "anomalign"
# Lowest first. The shared base (errors, config, files, weights, runs, training, metrics, figures, devices) imports
# nothing above it; a module may import its own layer and the ones below.
LAYERS = ["base", "data", "generator", "synthesis", "segmenter", "evaluation", "app"]
APP = {"cli", "demo", "__main__", "pipeline", "plan", "stages", "crossfit", "study"}


def layer(module: str) -> int:
    """Layer index of a dotted module name below ``anomalign``."""
    parts = module.split(".")
    if len(parts) < 2:
        return 0  # the package itself: version and errors only
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return LAYERS.index("app") if parts[1] in APP else 0


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every anomalign import in a file, including those inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("anomalign"):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("anomalign")]
    return found


def test_no_module_imports_a_layer_above_it():
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(("anomalign",) + path.relative_to(SRC).with_suffix("").parts)
        for line, target in imports(path):
            if layer(target) > layer(module):
                upward.append(f"{path.relative_to(SRC)}:{line} ({LAYERS[layer(module)]}) imports {target} "
                              f"({LAYERS[layer(target)]})")
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("argv", [["--help"], ["data", "check", "--help"], ["train-generator", "--help"]])
def test_help_does_not_import_the_model_libraries(argv):
    code = ("import sys\nfrom anomalign.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'diffusers', 'transformers', 'peft', 'accelerate'})\n"
            "print('HEAVY', heavy)")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "HEAVY []" in r.stdout, r.stdout[-500:]


def import_graph() -> dict[str, set[str]]:
    """{module: the anomalign modules it imports} (a ``from anomalign.x import y`` names module ``x.y`` when y is
    a module, else ``x``; imports inside functions and ``TYPE_CHECKING`` blocks count)."""
    modules = {".".join(("anomalign",) + p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
               for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("anomalign"):
                names = [f"{node.module}.{a.name}" for a in node.names]
                targets |= {n for n in names if n in modules} or {node.module}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("anomalign")}
        graph[module] = {t for t in targets if t in modules and t != module and t != "anomalign"}
    return graph


def test_no_import_circles():
    """issue 50: no two modules import each other, directly or through others (Tarjan's strongly connected
    components of the import graph)."""
    graph, index, low, stack, on, circles = import_graph(), {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                circles.append(sorted(part))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, circles
