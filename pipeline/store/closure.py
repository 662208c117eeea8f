"""Which source files a stage runs: the code that can change its outputs.

The closure is read from the code with `ast`: the stage's command in pipeline/commands/stage.py
(with that module's own top-level code), then every pipeline/ and rvpt/ module those import,
transitively, counting imports inside functions too, since they run when called; the bodies of
the other stages' commands are left out, since a stage never calls them. The `rvpt` entry point
(pipeline/cli.py) and the commands around the pipeline (the UI, profiles, `rvpt defend`) are not
in it: they only register or start commands. A registry that finds its members at run time runs
every module of its folder (REGISTRIES). An empty package __init__ counts for nothing.

It is the one answer to "what code does this stage depend on": dvc.yaml's code deps are written
from it (`uv run python -m pipeline.store.closure --write`; a test fails when they drift), and the
memo keys each stage's results on it (pipeline/store/memo.py), so an edit to a CLI-only module
neither reruns a stage nor retrains a cell.
"""
from __future__ import annotations

import argparse
import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "rvpt")
STAGE_COMMANDS = ROOT / "pipeline" / "commands" / "stage.py"
FOLDED = ("rvpt/attacks", "rvpt/defenses")  # listed as folders in dvc.yaml when every module of them runs
# Registries that import every module of their folder at run time (rvpt/discovery.py): whatever
# imports one runs them all.
REGISTRIES = {"rvpt/attacks/__init__.py": "rvpt.attacks", "rvpt/defenses/registry.py": "rvpt.defenses"}


def module_file(name: str) -> Path | None:
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def is_command(node: ast.AST) -> bool:
    return isinstance(node, ast.FunctionDef) and any(
        isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
        for d in node.decorator_list)


def imported(nodes) -> set[str]:
    """Dotted names of the modules (and, for `from m import x`, the possible submodules m.x)."""
    names = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def closure(start: set[str]) -> set[Path]:
    """The project files that importing the modules `start` names runs (another command's body excepted)."""
    files, todo = set(), list(start)
    while todo:
        parts = todo.pop().split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c
            path = module_file(".".join(parts[:depth]))
            if path is None or path in files:
                continue
            files.add(path)
            todo += imported([n for n in ast.parse(path.read_text()).body if not is_command(n)])
            package = REGISTRIES.get(str(path.relative_to(ROOT)))
            if package:
                todo += [f"{package}.{p.stem}" for p in path.parent.glob("*.py") if p.name != "__init__.py"]
    return {f for f in files if f.read_text().strip() or f.name != "__init__.py"}


@functools.cache
def stage_files(stage: str) -> frozenset[Path]:
    """The project files `rvpt stage STAGE` runs."""
    tree = ast.parse(STAGE_COMMANDS.read_text())
    commands = {node.name: node for node in tree.body if is_command(node)}
    if stage not in commands:
        raise KeyError(f"no `rvpt stage {stage}` in {STAGE_COMMANDS}")
    common = [node for node in tree.body if not is_command(node)]
    return frozenset(closure(imported(common + [commands[stage]])) | {STAGE_COMMANDS})


def listed(stage: str) -> list[str]:
    """The stage's code deps as dvc.yaml lists them: files relative to the root, and a folder of
    FOLDED where the stage runs every module in it."""
    files = {str(p.relative_to(ROOT)) for p in stage_files(stage)}
    for folder in FOLDED:
        members = {str(p.relative_to(ROOT)) for p in (ROOT / folder).glob("*.py")
                   if p.read_text().strip() or p.name != "__init__.py"}
        if members <= files:
            files = (files - members) | {folder}
    return sorted(files)


def write_deps(dvc_yaml: Path = ROOT / "dvc.yaml") -> bool:
    """Rewrites the code deps of every stage in dvc.yaml from its closure, keeping every other line
    (data deps, comments); True when anything changed."""
    text = dvc_yaml.read_text()
    lines, out, stage = text.split("\n"), [], None
    i = 0
    while i < len(lines):
        found = re.match(r"    cmd: rvpt stage (\w+)", lines[i])
        stage = found.group(1) if found else stage
        out.append(lines[i])
        i += 1
        if out[-1].strip() == "deps:" and stage:
            while i < len(lines) and lines[i].startswith("      - "):
                if not re.match(r"(pipeline|rvpt)(/|$)", lines[i][8:].split("#")[0].strip()):
                    out.append(lines[i])  # a data dep
                i += 1
            out += [f"      - {dep}" for dep in listed(stage)]
            stage = None
    written = "\n".join(out)
    dvc_yaml.write_text(written)
    return written != text


def main() -> None:
    parser = argparse.ArgumentParser(description="Each stage's code deps, from the code it runs.")
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps from them")
    args = parser.parse_args()
    if args.write:
        print("dvc.yaml: code deps rewritten" if write_deps() else "dvc.yaml: code deps already match")
        return
    for stage in (node.name for node in ast.parse(STAGE_COMMANDS.read_text()).body if is_command(node)):
        print(f"{stage}:\n" + "".join(f"  - {dep}\n" for dep in listed(stage)), end="")


if __name__ == "__main__":
    main()
