"""Every stage's code deps in dvc.yaml are exactly the code it runs, as pipeline/store/closure.py
reads it from the code: its command in pipeline/commands/stage.py, then every pipeline/ and rvpt/
module those import, transitively, imports inside functions included, and every module of a
folder whose registry imports them all. A stale dep list means `dvc repro` reports "up to date" over
results the code would now change, or reruns a stage that no edit could affect.

`uv run python -m pipeline.store.closure --write` rewrites dvc.yaml's code deps from the code."""
from pathlib import Path

import pytest
import yaml

from pipeline.store import closure

ROOT = closure.ROOT


def stages() -> list[tuple[str, str, list[str]]]:
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return [(name, stage["cmd"].split()[2], stage.get("deps", [])) for name, stage in spec.items()]


def code(deps: list[str]) -> list[str]:
    return sorted(dep for dep in deps if dep.split("/")[0] in closure.PACKAGES)


@pytest.mark.parametrize("name, command, deps", stages(), ids=[s[0] for s in stages()])
def test_a_stage_depends_on_exactly_the_code_it_runs(name, command, deps):
    assert code(deps) == closure.listed(command), f"{name}: run `python -m pipeline.store.closure --write`"


def test_the_closure_follows_imports_inside_functions_and_no_other_command():
    # pipeline/commands/stage.py imports each stage's module inside its command.
    tune = closure.stage_files("tune")
    assert ROOT / "pipeline" / "stages" / "tune.py" in tune
    assert ROOT / "pipeline" / "stages" / "tune.py" not in closure.stage_files("download")
    # The entry point and the commands around the pipeline only register or start commands.
    for module in ("cli.py", "commands/ui.py", "commands/profile.py", "commands/defend.py", "commands/warm.py"):
        assert ROOT / "pipeline" / module not in tune, module


def test_a_registry_runs_every_module_of_its_folder_and_only_what_needs_it_imports_one():
    defenses = {ROOT / "rvpt" / "defenses" / name for name in ("coop.py", "cleanclip.py", "prompt_tuning.py")}
    assert defenses <= closure.stage_files("tune")
    for stage in ("download", "sample", "poison", "pretrain"):  # they run no defense
        assert not defenses & closure.stage_files(stage), stage
    assert ROOT / "rvpt" / "scan.py" not in closure.stage_files("pretrain")


def test_each_stage_is_one_module_named_as_its_command():
    # pipeline/stages/ holds the stages and nothing else, so its listing is the pipeline.
    modules = {p.stem for p in (ROOT / "pipeline" / "stages").glob("*.py") if p.name != "__init__.py"}
    assert modules == {command for _, command, _ in stages()}
    for name, command, _ in stages():
        assert ROOT / "pipeline" / "stages" / f"{command}.py" in closure.stage_files(command), name
        others = {ROOT / "pipeline" / "stages" / f"{m}.py" for m in modules - {command}}
        assert not others & closure.stage_files(command), name


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

