"""The GitHub Actions workflows pass two linters from the locked dev dependencies: the workflow
schema (check-jsonschema's vendored copy of SchemaStore's) and zizmor's audits (pinned actions,
injection, credentials, permissions), offline. Neither can run the workflows: docs/gpu-runner.md
says how a GPU runner and a DVC remote are attached."""
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
BIN = Path(sys.executable).parent


def lint(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, cwd=REPO)


def test_there_is_a_gpu_runner_workflow():
    assert REPO / ".github" / "workflows" / "gpu-pipeline.yml" in WORKFLOWS


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_a_workflow_matches_the_github_workflow_schema(workflow):
    result = lint("check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(workflow))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_zizmor_finds_nothing_in_a_workflow(workflow):
    result = lint("zizmor", "--offline", "--no-progress", str(workflow))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_linters_catch_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("name: x\non: push\njobs:\n  a:\n    runs_on: gpu\n    steps:\n"
                      "      - uses: actions/checkout@v4\n")
    assert lint("check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(broken)).returncode != 0
    assert lint("zizmor", "--offline", "--no-progress", str(broken)).returncode != 0
