"""Every stage's code deps in dvc.yaml are exactly the project modules its command imports.

The closure is read from the code with `ast`: the stage's `rvpt stage NAME` function in
pipeline/cli.py (with the module-level code and helpers that every command runs), then every
pipeline/ and rvpt/ module those import, transitively, counting imports inside functions too,
since they run when called; the bodies of other Typer commands are left out, since a stage never
calls them. A listed folder stands for its .py files; an empty package __init__ counts for
nothing. A stale dep list means `dvc repro` reports "up to date" over results the code would now
change, or reruns a stage that no edit could affect.

`uv run python tests/test_stage_deps.py` prints each stage's list, as dvc.yaml should hold it."""
import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "rvpt")
CLI = ROOT / "pipeline" / "cli.py"


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


def with_packages(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(start: set[str]) -> set[Path]:
    seen, files, todo = set(), set(), list(start)
    while todo:
        name = todo.pop()
        for part in with_packages(name):
            path = module_file(part)
            if path is None or path in files:
                continue
            files.add(path)
            # Another command's body runs only when that command is called, never under this stage.
            todo += imported([n for n in ast.parse(path.read_text()).body if not is_command(n)])
        seen.add(name)
    # An empty package __init__ runs nothing a change could alter.
    return {f for f in files if f.read_text().strip() or f.name != "__init__.py"}


def command_closure(command: str) -> set[Path]:
    """The project files `rvpt stage <command>` runs."""
    tree = ast.parse(CLI.read_text())
    stage_app = [n for n in tree.body if is_command(n)
                 and any(isinstance(d, ast.Call) and getattr(d.func.value, "id", "") == "stage_app"
                         for d in n.decorator_list)]
    named = {(d.args[0].value if d.args else n.name): n for n in stage_app for d in n.decorator_list
             if isinstance(d, ast.Call)}
    commands = {n.name: n for n in tree.body if is_command(n)}
    common = [n for n in tree.body if not is_command(n)]  # module code and helpers every command runs
    runs, todo = [], [named[command]]
    while todo:  # `rvpt stage report` calls the `rvpt report` command's function
        function = todo.pop()
        runs.append(function)
        todo += [commands[c.func.id] for c in ast.walk(function) if isinstance(c, ast.Call)
                 and isinstance(c.func, ast.Name) and c.func.id in commands and commands[c.func.id] not in runs]
    return closure(imported(common + runs) | {"pipeline.cli"}) | {CLI}


def listed(deps: list[str]) -> set[Path]:
    files = set()
    for dep in deps:
        path = ROOT / dep
        if dep.split("/")[0] not in PACKAGES or not (path.suffix == ".py" or path.is_dir()):
            continue
        files |= set(path.rglob("*.py")) if path.is_dir() else {path}
    return {f for f in files if f.read_text().strip() or f.name != "__init__.py"}


def stages() -> list[tuple[str, str, list[str]]]:
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return [(name, stage["cmd"].split()[2], stage.get("deps", [])) for name, stage in spec.items()]


@pytest.mark.parametrize("name, command, deps", stages(), ids=[s[0] for s in stages()])
def test_a_stage_depends_on_exactly_the_code_it_runs(name, command, deps):
    needed, declared = command_closure(command), listed(deps)
    missing = sorted(str(p.relative_to(ROOT)) for p in needed - declared)
    extra = sorted(str(p.relative_to(ROOT)) for p in declared - needed)
    assert not missing and not extra, f"{name}: dvc.yaml misses {missing}; lists, but never runs, {extra}"


def test_the_closure_follows_imports_inside_functions():
    # cli.py imports each stage's module inside its command, so the closure must see those imports.
    assert ROOT / "pipeline" / "stages" / "tune.py" in command_closure("tune")
    assert ROOT / "pipeline" / "stages" / "tune.py" not in command_closure("download")


def test_each_stage_is_one_module_named_as_its_command():
    # pipeline/stages/ holds the stages and nothing else, so its listing is the pipeline.
    modules = {p.stem for p in (ROOT / "pipeline" / "stages").glob("*.py") if p.name != "__init__.py"}
    assert modules == {command for _, command, _ in stages()}
    for name, command, _ in stages():
        assert ROOT / "pipeline" / "stages" / f"{command}.py" in command_closure(command), name
        others = modules - {command}
        assert not {ROOT / "pipeline" / "stages" / f"{m}.py" for m in others} & command_closure(command), name


def test_validating_params_imports_no_defense_or_scanner():
    # params.yaml is validated by every stage, so what its validation imports is in every stage's
    # deps; the kind names it admits are spelled out, and must stay those of the implementations.
    from pipeline import params_defenses, params_scan
    from rvpt import defenses, scan

    assert params_defenses.KINDS == tuple(defenses.KINDS)
    assert params_scan.KINDS == scan.KINDS
    assert ROOT / "rvpt" / "scan.py" not in command_closure("sample")
    assert ROOT / "rvpt" / "defenses" / "coop.py" not in command_closure("sample")


def test_bytecode_that_python_writes_is_no_code_change(reproduced, tmp_path):
    # Outside this project's CI, Python writes __pycache__/*.pyc beside what it imports; in a folder
    # dep (rvpt/attacks) that would read as an edit, and `dvc repro` would rerun unchanged stages.
    import subprocess
    import sys

    from conftest import copy_of, environment, run

    project = copy_of(reproduced, tmp_path)
    env = {k: v for k, v in environment().items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", "import pipeline.cli, rvpt.attacks, rvpt.defenses"], cwd=project, env=env,
                   check=True)
    assert list((project / "rvpt" / "attacks" / "__pycache__").glob("*.pyc"))
    assert run(["dvc", "status"], project).stdout.strip() == "Data and pipelines are up to date."


def defined_stages() -> dict[str, dict]:
    """dvc.yaml's stages as DVC names them, matrices expanded over params.yaml's lists."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    out = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        if "matrix" not in stage:
            out[name] = stage
            continue
        [(key, reference)] = stage["matrix"].items()  # each matrix here runs over one list of params.yaml
        values = params
        for part in reference.removeprefix("${").removesuffix("}").split("."):
            values = values[part]
        for value in values:
            text = yaml.safe_dump(stage).replace(f"${{item.{key}}}", value)
            out[f"{name}@{value}"] = yaml.safe_load(text)
    return out


def test_the_committed_lock_and_gitignores_hold_only_todays_stages():
    # DVC keeps the entry of a stage dvc.yaml no longer defines, and re-reads and rewrites the
    # whole dvc.lock after every stage: stale entries slow every stage of every run. A stale line
    # in a .gitignore DVC manages changes the hash of the folder it sits in (scan depends on
    # defended/), so a fresh clone would rerun stages over unchanged outputs.
    stages = defined_stages()
    assert set(yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]) == set(stages)
    outs = [next(iter(o)) if isinstance(o, dict) else o for s in stages.values() for o in s.get("outs", [])]
    for folder in ("data", "data/poisoned", "models", "defended"):
        listed_outs = {f"/{Path(o).name}" for o in outs if str(Path(o).parent) == folder}
        assert set((ROOT / folder / ".gitignore").read_text().split()) == listed_outs, folder


if __name__ == "__main__":
    # Prints each stage's code deps as dvc.yaml should list them (folders where a whole package runs).
    for name, command, _ in stages():
        print(f"{name}:")
        for path in sorted(str(p.relative_to(ROOT)) for p in command_closure(command)):
            print(f"  - {path}")
