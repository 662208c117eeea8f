"""Bad params, options and missing inputs: exit code 2, one line naming the culprit, nothing written."""
import sys

import pytest
import yaml
from conftest import run, smoke_params


def files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if ".git" not in p.parts)


@pytest.mark.parametrize("update, culprit", [
    ({"sample": {"shots": 0}}, "sample.shots"),
    ({"attacks": {"badnet": {"rate": 1.5}}}, "attacks.badnet.rate"),
    ({"attacks": {"badnet": {"rate": 0}}}, "attacks.badnet.rate"),
    ({"attacks": {"badnet": {"target": "banana"}}}, "attacks.badnet.target"),
    ({"attacks": {"badnet": {"kind": "nope"}}}, "unknown attack kind 'nope'"),
    ({"run": {"attacks": ["ghost"]}}, "run.attacks"),
    ({"defenses": {"rvpt": {"first_block": 9}}}, "defenses.rvpt.first_block"),
    ({"defenses": {"coop": {"lr": -1}}}, "defenses.coop.lr"),
    ({"defenses": {"coop": {"kind": "bogus"}}}, "defenses.coop"),
    ({"defenses": {"cleanclip": {"budget": 10 ** 6}}}, "defenses.cleanclip.budget"),
    ({"attacks": {"badclip": {"optimise": None}}}, "optimise"),
    ({"attacks": {"wanet": {"options": {"strength": 2}}}}, "attacks.wanet"),
    ({"pretrain": {"poisoned": {"frozen": "both"}}}, "pretrain.poisoned.frozen"),
    ({"data": {"shift": {"distractors": 40}}}, "data.shift.distractors"),
    ({"data": {"stickers": 2}}, "data.stickers"),
])
def test_invalid_params_exit_2_naming_the_key(tmp_path, update, culprit):
    # `check` holds the whole file to every block; other stages validate the blocks they run.
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(smoke_params(**update)))
    before = files(tmp_path)
    result = run(["rvpt", "stage", "check"], tmp_path, check=False)
    assert result.returncode == 2
    assert culprit in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert files(tmp_path) == before


@pytest.mark.parametrize("args, culprit", [
    (["sample", "-S", "sample.shots=0"], "-S sample.shots"),
    (["sample", "-S", "sample.shots=-3"], "-S sample.shots"),
    (["sample", "-S", "sample.shots"], "-S 'sample.shots'"),
    (["sample", "-S", "sample.shots=[1"], "-S sample.shots"),
    (["poison", "--attack", "badnet", "-S", "attacks.badnet.rate=2"], "-S attacks.badnet.rate"),
    (["poison", "--attack", "badnet", "-S", "attacks.badnet.target=banana"], "-S attacks.badnet.target"),
    (["poison", "--attack", "ghost"], "--attack"),
    (["tune", "-S", "defenses.rvpt.alhpa=1", "--defense", "rvpt"], "-S defenses.rvpt.alhpa"),
    (["tune", "--defense", "rvpt", "-S", "defenses.rvpt.lr=-1"], "-S defenses.rvpt.lr"),
    (["tune", "--defense", "ghost"], "--defense"),
])
def test_invalid_options_exit_2_naming_the_option(tmp_path, args, culprit):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(smoke_params()))
    before = files(tmp_path)
    result = run(["rvpt", "stage", *args], tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    assert culprit in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert files(tmp_path) == before


@pytest.mark.parametrize("stage, missing", [
    ("poison", "data/clean/corpus"),
    ("sample", "data/clean/downstream/train.parquet"),
    ("tune", "models/badnet"),
    ("evaluate", "data/clean/downstream/test.parquet"),
])
def test_missing_upstream_output_exits_2_naming_the_file(tmp_path, stage, missing):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(smoke_params()))
    result = run(["rvpt", "stage", stage], tmp_path, check=False)
    assert result.returncode == 2
    assert missing in result.stderr and "missing upstream output" in result.stderr
    assert files(tmp_path) == [p for p in files(tmp_path) if p.name == "params.yaml"]


@pytest.mark.parametrize("args, culprit", [
    (["sample", "--shots", "abc"], "--shots"),
    (["sample", "--bogus"], "--bogus"),
    (["nope"], "nope"),
])
def test_malformed_command_lines_get_one_line_and_exit_2(tmp_path, args, culprit):
    result = run(["rvpt", "stage", *args], tmp_path, check=False)
    assert result.returncode == 2
    assert culprit in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("rvpt: error: stage") and result.stderr.count("rvpt") == 1
    assert not any(tmp_path.iterdir())


def test_the_command_names_its_version_and_runs_as_python_m_rvpt(tmp_path):
    from importlib.metadata import version

    for command in (["rvpt"], [sys.executable, "-m", "rvpt"]):
        assert run([*command, "--version"], tmp_path).stdout == f"rvpt {version('rvpt')}\n"
    assert "rvpt: error: No such option: --bogus" == run(["rvpt", "--bogus"], tmp_path, check=False).stderr.strip()
    shown = run([sys.executable, "-m", "rvpt", "stage", "pretrain", "--help"], tmp_path).stdout
    assert "--clean" in shown and "<bool>" not in shown  # a flag takes no value, so it shows no type


def test_the_target_class_is_one_edit_and_blocks_that_do_not_run_never_block_a_run(tmp_path):
    from pipeline.config.params import validate
    from rvpt.errors import BadInput

    chosen = validate(smoke_params(target="two", attacks={"blended": {"target": "one"}}))
    assert {name: a.target for name, a in chosen.attacks.items()} == {
        name: "one" if name == "blended" else "two" for name in chosen.attacks}
    with pytest.raises(BadInput, match=r"^params.yaml: target: 'banana' is not one of data.classes"):
        validate(smoke_params(target="banana"))
    # label_consistent and coop are not in run: their cross-checks wait until they are chosen ...
    spare = smoke_params(attacks={"label_consistent": {"target": "banana"}}, defenses={"coop": {"context": 99}})
    validate(spare)
    # ... but every block is still type-checked
    with pytest.raises(BadInput, match="attacks.label_consistent.rate"):
        validate(smoke_params(attacks={"label_consistent": {"rate": 2}}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(spare))
    before = files(tmp_path)
    for args, culprit in ((["poison", "--attack", "label_consistent"], "attacks.label_consistent.target: 'banana'"),
                          (["tune", "--attack", "badnet", "--defense", "coop"], "defenses.coop.context: 99")):
        result = run(["rvpt", "stage", *args], tmp_path, check=False)
        assert result.returncode == 2 and culprit in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert files(tmp_path) == before


def test_every_options_help_text_is_shown_whole():
    """typer renders help as markdown: a `<class>` or a bare `*` in a help text would vanish."""
    import re

    import click
    from typer.main import get_command
    from typer.testing import CliRunner

    from pipeline.cli import app

    def commands(group, path):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from commands(command, [*path, name])
            else:
                yield [*path, name], command

    def flat(text: str) -> str:
        return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())

    checked = 0
    for path, command in commands(get_command(app), []):
        if "--help" not in command.get_help_option_names(click.Context(command)):
            continue  # `rvpt repro` hands --help to `dvc repro` by exec, which would replace this process
        shown = flat(CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).output)
        for option in command.params:
            if getattr(option, "help", None):
                assert flat(option.help.replace("\\*", "*").replace("`", "")) in shown, (path, option.name)
                checked += 1
    assert checked > 20
