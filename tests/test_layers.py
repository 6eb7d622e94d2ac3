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
APP = {"cli", "demo", "__main__", "pipeline", "plan", "study"}


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
