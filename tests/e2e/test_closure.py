"""Each stage's code is the closure of what it runs (pipeline/store/closure.py): dvc.yaml's deps are
written from it, and the memo keys on it. An edit to a module no stage runs reruns nothing; an edit
to a defense reruns the stages that run defenses and no other."""
import re

from conftest import copy_of, environment, run


def stale_stages(project, env) -> set[str]:
    """The stages `dvc status` says changed."""
    status = run(["dvc", "status"], project, env).stdout
    return {found.group(1) for found in re.finditer(r"^(\S+):\s*$", status, re.M)}


def test_an_edit_to_a_cli_only_module_retrains_nothing(reproduced, tmp_path):
    project = copy_of(reproduced, tmp_path)
    env = environment({"PYTHONPATH": str(project)})
    ui = project / "pipeline" / "commands" / "ui.py"
    ui.write_text(ui.read_text() + "\n# an edit to the UI command alone\n")
    assert stale_stages(project, env) == set()
    tuned = run(["rvpt", "stage", "tune"], project, env).stdout  # by hand: the memo decides
    assert tuned.count("read back") == 4 and "trainable params" not in tuned


def test_an_edit_to_one_defense_reruns_only_what_runs_defenses(reproduced, tmp_path):
    project = copy_of(reproduced, tmp_path)
    env = environment({"PYTHONPATH": str(project)})
    coop = project / "rvpt" / "defenses" / "coop.py"
    coop.write_text(coop.read_text() + "\n# an edit to CoOp\n")
    stale = stale_stages(project, env)
    assert {"check", "tune@rvpt", "tune@cleanclip", "scan", "evaluate"} <= stale
    assert not {"download", "sample", "pretrain_clean", "pretrain@badnet", "poison@badnet"} & stale
