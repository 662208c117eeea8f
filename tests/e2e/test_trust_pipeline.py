"""Trust at the pipeline level, through real DVC, real MLflow and the real command line: hostile
checkpoints and data, a stage killed mid-run, an unreachable tracking server, exact reruns."""
import json
import signal
import socket
import subprocess
import time

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml
from conftest import BIN, copy_of, environment, make_project, run, smoke_params
from hostile import HOSTILE_IMAGES, malicious_checkpoint

from rvpt import models
from rvpt.checkpoint import read_safetensors


def snapshot(root, *folders):
    return {str(p.relative_to(root)): p.read_bytes() for folder in folders for p in (root / folder).rglob("*")
            if p.is_file()}


def test_tune_and_evaluate_refuse_code_running_checkpoints(reproduced, tmp_path):
    project = copy_of(reproduced, tmp_path)
    marker = tmp_path / "pwned"
    before = snapshot(project, "models", "defended", "results")

    def swap_in_pickle(folder):
        state = models.load(folder)[0].state_dict()
        (folder / models.WEIGHTS_NAME).unlink()
        malicious_checkpoint(folder / "open_clip_pytorch_model.bin", marker, state)

    swap_in_pickle(project / "models" / "badnet")
    for command in (["tune", "--attack", "badnet", "--defense", "rvpt"], ["scan"], ["evaluate"]):
        result = run(["rvpt", "stage", *command], project, check=False)
        assert result.returncode == 2, result.stderr
        assert "refused, not a weights-only checkpoint" in result.stderr and "models/badnet" in result.stderr
        assert not marker.exists()
    # A defended whole model (CleanCLIP's) is checked the same way when evaluate loads it.
    (project / "models" / "badnet" / "open_clip_pytorch_model.bin").unlink()
    (project / "models" / "badnet" / models.WEIGHTS_NAME).write_bytes(before["models/badnet/" + models.WEIGHTS_NAME])
    swap_in_pickle(project / "defended" / "cleanclip" / "badclip")
    result = run(["rvpt", "stage", "evaluate"], project, check=False)
    assert result.returncode == 2 and "defended/cleanclip/badclip" in result.stderr
    assert not marker.exists()
    after = snapshot(project, "results")
    assert after == {k: v for k, v in before.items() if k.startswith("results/")}


def test_unreadable_images_and_odd_captions_in_the_corpus(reproduced, tmp_path):
    project = copy_of(reproduced, tmp_path)
    shard = project / "data" / "clean" / "corpus" / "part-00000.parquet"
    table = pq.read_table(shard).to_pydict()
    for row, make in enumerate(HOSTILE_IMAGES.values()):
        table["image"][row] = make()
    odd = ["", "🦄 ünïcödé ☃ 日本語の説明", "word " * 5000, "\x00\t\n"]
    for row, caption in enumerate(odd, start=10):
        table["caption"][row] = caption
    schema = pq.read_schema(shard)
    pq.write_table(pa.Table.from_pydict(table, schema=schema), shard)
    kept = snapshot(project, "models/clean")

    result = run(["rvpt", "stage", "pretrain", "--clean", "-S", "pretrain.clean.steps=3"], project)
    assert "skipped 3 of 1200 unreadable images" in result.stderr
    assert (project / "models" / "clean" / "pretrain.json").exists()

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["max_bad_fraction"] = 0.0
    (project / "strict.yaml").write_text(yaml.safe_dump(params))
    written = snapshot(project, "models/clean")
    refused = run(["rvpt", "stage", "pretrain", "--clean", "--params", "strict.yaml"], project, check=False)
    assert refused.returncode == 2 and "3 of 1200 images unreadable" in refused.stderr
    assert "data/clean/corpus" in refused.stderr
    assert snapshot(project, "models/clean") == written != kept  # the previous output is kept as it was


def test_two_fresh_projects_give_byte_identical_results_and_prompts(reproduced, tmp_path):
    again = make_project(tmp_path / "again", smoke_params())
    run(["dvc", "repro"], again)
    assert (again / "results" / "summary.json").read_bytes() == (reproduced / "results" / "summary.json").read_bytes()
    files = sorted(p.relative_to(again) for folder in ("models", "defended", "data/poisoned")
                   for p in (again / folder).rglob("*.safetensors"))
    assert any(p.name == "prompts.safetensors" for p in files)
    for path in files:
        # Tensors and metadata compare exactly; the header's byte order can differ, since the
        # safetensors writer stores metadata in a hash map.
        ours, theirs = read_safetensors(again / path), read_safetensors(reproduced / path)
        assert ours[1] == theirs[1] and ours[0].keys() == theirs[0].keys(), path
        assert all(torch.equal(ours[0][k], theirs[0][k]) for k in ours[0]), path


def is_stage(process: psutil.Process, command: str) -> bool:
    try:  # short-lived helpers (git) may be gone by the time they are looked at
        return command in " ".join(process.cmdline()) and "python" in process.name().lower() + process.exe().lower()
    except psutil.NoSuchProcess:
        return False


def killed_midway(project, checkpoint, target="pretrain_clean", command="pretrain"):
    """Starts `dvc repro <target>`, SIGKILLs the stage's process once it has saved a state."""
    dvc = subprocess.Popen([str(BIN / "dvc"), "repro", target], cwd=project, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=environment())
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and dvc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    stage = [p for p in psutil.Process(dvc.pid).children(recursive=True) if is_stage(p, command)]
    assert stage, "the stage finished before it could be killed"
    for process in stage:
        process.send_signal(signal.SIGKILL)
    output, _ = dvc.communicate(timeout=60)
    return dvc.returncode, output


def test_pretrain_killed_midway_resumes_to_the_same_model(tmp_path):
    params = smoke_params(pretrain={"clean": {"steps": 400}, "checkpoint_every": 40})
    reference = make_project(tmp_path / "reference", params)
    run(["dvc", "repro", "download"], reference)
    project = copy_of(reference, tmp_path)
    run(["dvc", "repro", "pretrain_clean"], reference)

    checkpoint = project / ".rvpt" / "checkpoints" / "pretrain-clean.pt"
    code, output = killed_midway(project, checkpoint)
    assert code != 0, output
    assert not (project / "models" / "clean").exists() and checkpoint.exists()

    resumed = run(["dvc", "repro", "pretrain_clean"], project)
    assert "resumed from step" in resumed.stdout
    assert not checkpoint.exists()
    ours, theirs = snapshot(project, "models/clean"), snapshot(reference, "models/clean")
    assert ours["models/clean/" + models.WEIGHTS_NAME] == theirs["models/clean/" + models.WEIGHTS_NAME]
    assert ours["models/clean/loss.csv"] == theirs["models/clean/loss.csv"]
    metrics = [{k: v for k, v in json.loads(s["models/clean/pretrain.json"]).items() if k != "mlflow_run_id"}
               for s in (ours, theirs)]
    assert metrics[0] == metrics[1]
    assert "up to date" in run(["dvc", "status", "pretrain_clean"], project).stdout


def test_tune_killed_midway_resumes_to_the_same_prompts(reproduced, tmp_path):
    target = "tune@rvpt"
    projects = [copy_of(reproduced, tmp_path / name) for name in ("reference", "killed")]
    for project in projects:
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["defenses"]["rvpt"]["epochs"] = 500
        params["tune"]["checkpoint_every"] = 50
        params["run"]["attacks"] = ["badnet"]  # the stage tune@rvpt trains one cell
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    reference, project = projects
    run(["dvc", "repro", target], reference)
    checkpoint = project / ".rvpt" / "checkpoints" / "tune-badnet-rvpt.pt"
    code, output = killed_midway(project, checkpoint, target, "tune")
    assert code != 0, output
    assert checkpoint.exists()
    resumed = run(["dvc", "repro", target], project)
    assert "resumed from step" in resumed.stdout and not checkpoint.exists()
    folder = "defended/rvpt/badnet"
    ours, theirs = (read_safetensors(p / folder / "prompts.safetensors")[0] for p in (project, reference))
    assert torch.equal(ours["prompts"], theirs["prompts"])
    assert (project / folder / "loss.csv").read_bytes() == (reference / folder / "loss.csv").read_bytes()
    summaries = [{k: v for k, v in json.loads((p / folder / "tune.json").read_text()).items() if k != "mlflow_run_id"}
                 for p in (project, reference)]
    assert summaries[0] == summaries[1]


def test_an_mlflow_server_that_never_answers_fails_fast(tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections into the backlog, never answers them
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(smoke_params(tracking={"timeout_s": 2})))
    started = time.monotonic()
    result = run(["rvpt", "stage", "download"], tmp_path, check=False,
                 env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{silent.getsockname()[1]}"})
    elapsed = time.monotonic() - started
    silent.close()
    assert result.returncode == 2 and "did not answer within 2 s" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert elapsed < 20, elapsed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
