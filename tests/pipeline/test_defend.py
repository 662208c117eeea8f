"""`rvpt defend` on a model and an image folder the test fabricates, through the real command line."""
import hashlib
import json

import mlflow
import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY_MODEL, brought_files, run, smoke_params
from hostile import HOSTILE_IMAGES, malicious_checkpoint, tar_with

from rvpt import models
from rvpt.defenses.registry import KINDS
from rvpt.images import decode_image, normalize, to_unit_tensor
from rvpt.prompts import attach_prompts

CLASSES = ["zero", "one", "two"]


@pytest.fixture
def brought(tmp_path):
    """What a user brings: an open_clip local-dir model, an image folder with some broken files, params."""
    brought_files(tmp_path, CLASSES, folder_of=lambda name: "the_zero" if name == "zero" else name,  # _ -> space
                  suffix_of=lambda i: "png" if i % 2 else "jpg")
    for name, make in HOSTILE_IMAGES.items():
        (tmp_path / "images" / "two" / name).write_bytes(make())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(smoke_params(data={"max_bad_fraction": 0.2})))
    return tmp_path


def defend(root, *extra, model="model", data="images"):
    return run(["rvpt", "defend", "--model", str(model), "--data", str(data), "--out", "out",
                "--cache", str(root / "cache"), *extra], root, check=False)


def test_defend_writes_an_open_clip_model_with_prompts_and_reports_ca(brought, monkeypatch):
    result = defend(brought)
    assert result.returncode == 0, result.stderr
    assert "CA before" in result.stdout and "after" in result.stdout
    assert result.stderr.count("rvpt: warning: skipped") == 3 and "bomb.png" in result.stderr
    report = json.loads((brought / "out" / "defend.json").read_text())
    assert report["classes"] == ["one", "the zero", "two"]
    assert report["skipped_images"] == 3 and report["train_images"] + report["heldout_images"] == 18
    assert 0 <= report["clean_accuracy_before"] <= 1 and 0 <= report["clean_accuracy_after"] <= 1
    assert report["weights_sha256"] == hashlib.sha256(
        (brought / "model" / models.WEIGHTS_NAME).read_bytes()).hexdigest()
    # The scan before and after the defense, and the residual ASR of the trigger inverted before it.
    for when in ("before", "after"):
        scanned = report[f"scan_{when}"]
        assert scanned["flagged"] == (scanned["target"] is not None) and scanned["suspect"] in report["classes"]
        assert (brought / "out" / f"scan_{when}.png").read_bytes()[:4] == b"\x89PNG"
    assert 0 <= report["residual_success"] <= 1 and "residual ASR of the inverted trigger" in result.stdout

    # Plain open_clip loads the output; with the prompts attached it encodes like rvpt's defended model.
    loaded = open_clip.create_model(f"local-dir:{brought / 'out'}").eval()
    original, _ = models.load(brought / "model")
    ours = KINDS["prompt"].load(original, brought / "out", models.tokenizer(TINY_MODEL), ["a {}"])
    attach_prompts(loaded, brought / "out" / "prompts.safetensors")
    images = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(images), ours.encode_image(images), atol=1e-6)
        assert not torch.allclose(original.encode_image(images), ours.encode_image(images), atol=1e-4)

    # Its MLflow run, standing alone, and the defended model registered from it, which classifies
    # images as rvpt's own loading of --out does.
    client = mlflow.MlflowClient(f"sqlite:///{brought / 'mlflow.db'}")
    run = client.get_run(report["mlflow_run_id"])
    assert run.data.metrics["clean_accuracy_after"] == pytest.approx(report["clean_accuracy_after"])
    assert "mlflow.parentRunId" not in run.data.tags
    [version] = client.search_model_versions("name = 'rvpt-defend-rvpt'")
    assert version.run_id == run.info.run_id
    blobs = [p.read_bytes() for p in sorted((brought / "images" / "one").glob("*.*"))[:3]]
    # set_tracking_uri also sets MLFLOW_TRACKING_URI; monkeypatch takes it out again after the test,
    # so that later in-process stages of this worker log to their own project's store.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        served = mlflow.pyfunc.load_model(f"models:/rvpt-defend-rvpt/{version.version}").predict(
            pd.DataFrame({"image": blobs}))
    finally:
        mlflow.set_tracking_uri(previous)
    assert list(served.columns) == report["classes"]
    templates = yaml.safe_load((brought / "params.yaml").read_text())["defend"]["templates"]
    mine = KINDS["prompt"].load(original, brought / "out", models.tokenizer(TINY_MODEL), templates)
    pixels = normalize(to_unit_tensor(np.stack([decode_image(b, 16)[0] for b in blobs])))
    with torch.no_grad():
        logits = mine.logits(mine.encode_image(pixels).float(), mine.classifier(report["classes"]))
    assert (served.to_numpy().argmax(1) == logits.argmax(1).numpy()).all()


def test_defend_takes_a_weights_file_and_an_archive_by_checksum(brought):
    weights = brought / "model" / models.WEIGHTS_NAME
    archive = tar_with(brought / "images.tar.gz", {
        str(p.relative_to(brought)): p.read_bytes() for p in (brought / "images").rglob("*.*")
        if p.name not in HOSTILE_IMAGES})
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    config = brought / "model" / models.CONFIG_NAME
    result = defend(brought, "--config", str(config), "--data-sha256", digest, "--no-track", model=weights,
                    data=archive)
    assert result.returncode == 0, result.stderr
    assert json.loads((brought / "out" / "defend.json").read_text())["skipped_images"] == 0
    assert not (brought / "mlflow.db").exists()  # --no-track: no store
    bad = defend(brought, "--config", str(config), "--data-sha256", "0" * 64, model=weights, data=archive)
    assert bad.returncode == 2 and "sha256 is" in bad.stderr


def test_defend_fetches_a_model_by_url_only_with_its_sha256(brought, served):
    www, url = served
    weights = (brought / "model" / models.WEIGHTS_NAME).read_bytes()
    (www / "weights.safetensors").write_bytes(weights)
    config = str(brought / "model" / models.CONFIG_NAME)
    unchecked = defend(brought, "--config", config, model=f"{url}/weights.safetensors")
    assert unchecked.returncode == 2 and "needs its sha256" in unchecked.stderr
    digest = hashlib.sha256(weights).hexdigest()
    result = defend(brought, "--config", config, "--sha256", digest, "--no-track", model=f"{url}/weights.safetensors")
    assert result.returncode == 0, result.stderr
    assert json.loads((brought / "out" / "defend.json").read_text())["weights_sha256"] == digest


def test_defend_refuses_a_code_running_pickle_and_runs_none_of_it(brought):
    marker = brought / "pwned"
    state = models.build(TINY_MODEL, seed=3).state_dict()
    as_file = malicious_checkpoint(brought / "evil.bin", marker, state)
    as_dir = brought / "evil_dir"
    as_dir.mkdir()
    (as_dir / models.CONFIG_NAME).write_text((brought / "model" / models.CONFIG_NAME).read_text())
    malicious_checkpoint(as_dir / "open_clip_pytorch_model.bin", marker, state)
    for model, extra in ((as_file, ["--config", str(as_dir / models.CONFIG_NAME)]), (as_dir, [])):
        result = defend(brought, *extra, model=model)
        assert result.returncode == 2, result.stderr
        assert "refused, not a weights-only checkpoint" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not marker.exists() and not (brought / "out").exists()


def test_defend_refuses_unreadable_images_past_the_allowed_share(brought):
    (brought / "params.yaml").write_text(yaml.safe_dump(smoke_params(data={"max_bad_fraction": 0.0})))
    result = defend(brought)
    assert result.returncode == 2 and "3 of" in result.stderr and "data.max_bad_fraction" in result.stderr
    assert not (brought / "out").exists()


def test_defend_never_replaces_a_folder_it_did_not_write(brought):
    (brought / "out").mkdir()
    (brought / "out" / "precious.txt").write_text("keep me")
    result = defend(brought)
    assert result.returncode == 2 and "not an earlier `rvpt defend` output" in result.stderr
    assert (brought / "out" / "precious.txt").read_text() == "keep me"


def test_defend_reports_the_accuracy_plain_open_clip_measures(tmp_path):
    import numpy as np
    from conftest import independent_accuracy

    from rvpt.world import GlyphWorld

    brought_files(tmp_path, CLASSES)
    world, rng = GlyphWorld(CLASSES, 16), np.random.default_rng(1)
    (tmp_path / "images").rename(tmp_path / "train")
    (tmp_path / "data").mkdir()
    (tmp_path / "train").rename(tmp_path / "data" / "train")
    test, labels = [], []
    for label, name in enumerate(sorted(CLASSES)):  # class labels follow sorted folder names
        (tmp_path / "data" / "test" / name).mkdir(parents=True)
        for i in range(4):
            path = tmp_path / "data" / "test" / name / f"{i}.png"
            world.sample(rng, CLASSES.index(name)).image.save(path)
            test.append(path.read_bytes())
            labels.append(label)
    params = smoke_params()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = defend(tmp_path, "--no-track", data="data")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "defend.json").read_text())
    assert report["heldout_images"] == 12 and report["train_images"] == 18

    templates = params["defend"]["templates"]
    before = open_clip.create_model(f"local-dir:{tmp_path / 'model'}").eval()
    after = open_clip.create_model(f"local-dir:{tmp_path / 'out'}").eval()
    attach_prompts(after, tmp_path / "out" / "prompts.safetensors")
    for key, model in (("clean_accuracy_before", before), ("clean_accuracy_after", after)):
        expected = independent_accuracy(model, test, labels, sorted(CLASSES), templates, 16)
        assert report[key] == pytest.approx(expected, abs=1e-9), key
