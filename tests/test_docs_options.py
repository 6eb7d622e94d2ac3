"""Every option the README and docs name exists: on a command line `anomalign CMD ... --opt`, in CMD's
`--help`; anywhere else in code spans, in some command's `--help` (or the other tools' flags listed here)."""
import argparse
import re
from pathlib import Path

from anomalign.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# flags of other programs the docs show (pip, torchrun, accelerate, pytest, chromium, the study's scripts)
OTHER_TOOLS = {"--no-deps", "--nproc_per_node", "--num_processes", "--headless", "--no-sandbox", "--disable-gpu",
               "--virtual-time-budget", "--screenshot", "--window-size", "--dump-dom", "--upgrade", "--index-url",
               "--extra-index-url", "--multi_gpu", "--mixed_precision", "--standalone", "--nnodes", "--numa-binding"}
OTHER_PROGRAMS = ("python", "pip", "accelerate", "torchrun", "bash", "configs/", "benchmarks/")


def command_options() -> dict[tuple[str, ...], set[str]]:
    """{("train-generator",): {"--data", ...}, ("data", "check"): {...}, (): top-level options}."""
    out: dict[tuple[str, ...], set[str]] = {}

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        out[path] = {s for a in parser._actions for s in a.option_strings}
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, path + (name,))
    walk(build_parser(), ())
    return out


def code_lines(text: str) -> list[str]:
    """Lines of fenced blocks (continuations joined) and inline code spans."""
    lines, fenced, buf = [], False, ""
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            buf += line.rstrip().rstrip("\\") + " "
            if not line.rstrip().endswith("\\"):
                lines.append(buf)
                buf = ""
        else:
            lines += re.findall(r"`([^`]+)`", line)
    return lines


def test_every_option_in_the_docs_exists():
    options = command_options()
    known = set().union(*options.values()) | OTHER_TOOLS
    wrong = []
    for doc in DOCS:
        for line in code_lines(doc.read_text()):
            other_program = line.strip().startswith(OTHER_PROGRAMS)
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9_-]*)", line):
                if flag not in known and not other_program:
                    wrong.append(f"{doc.name}: {flag} (no command has it): {line.strip()[:120]}")
            for m in re.finditer(r"\banomalign ((?:data )?[a-z][a-z-]*)([^|;&]*)", line):
                path = tuple(m.group(1).split())
                if path not in options:
                    continue  # e.g. prose "anomalign reads ..." inside a code span
                for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9_-]*)", m.group(2).split(" anomalign ")[0]):
                    if flag not in options[path] and flag not in OTHER_TOOLS:
                        wrong.append(f"{doc.name}: `anomalign {m.group(1)}` has no {flag}: {line.strip()[:120]}")
    assert not wrong, "\n".join(wrong)
