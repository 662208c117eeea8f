"""model.name + model.pretrained: open_clip's ViT-B-32-quickgelu with its `openai` tag, found in a
local Hugging Face cache laid out as huggingface_hub writes it, never downloaded."""
import pytest
import torch
import yaml

import fabricate
from conftest import make_project, run, smoke_params
from rvpt import models
from rvpt.checkpoint import read_safetensors

@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    return fabricate.openai_cache(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    params = smoke_params(model={"name": "ViT-B-32-quickgelu", "pretrained": "openai", "config": None},
                          data={"image_size": 224, "corpus_size": 16, "train_per_class": 2, "val_per_class": 2,
                                "test_per_class": 2, "defender_pairs": 8},
                          defenses={"cleanclip": {"budget": 8}})
    root = make_project(tmp_path_factory.mktemp("pretrained") / "project", params)
    run(["rvpt", "stage", "download"], root)
    return root


def test_the_openai_tag_loads_from_the_local_cache(project, hub_cache):
    result = run(["rvpt", "stage", "pretrain", "--clean"], project, env={"HF_HUB_CACHE": str(hub_cache)})
    assert "from ViT-B-32-quickgelu/openai" in result.stdout
    ours, _ = read_safetensors(project / "models" / "clean" / models.WEIGHTS_NAME)
    theirs, _ = read_safetensors(next(hub_cache.rglob("open_clip_model.safetensors")))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    model, config = models.load(project / "models" / "clean")
    assert config["quick_gelu"] is True and config["vision_cfg"]["width"] == 768


def test_a_tag_missing_from_the_cache_says_how_to_get_it(project, tmp_path):
    result = run(["rvpt", "stage", "pretrain", "--clean"], project, env={"HF_HUB_CACHE": str(tmp_path)},
                 check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "not in the local cache" in result.stderr and "huggingface-cli download" in result.stderr


@pytest.mark.parametrize("change, message", [
    ({"pretrained": "no-such-tag"}, "neither a local file or folder nor an open_clip tag of ViT-B-32-quickgelu"),
    ({"name": "ViT-Q-99"}, "is not an open_clip model"),
])
def test_bad_model_names_and_tags_are_refused(project, change, message):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["model"].update(change)
    path = project / "bad.yaml"
    path.write_text(yaml.safe_dump(params))
    result = run(["rvpt", "stage", "pretrain", "--clean", "--params", str(path)], project, check=False)
    assert result.returncode == 2 and message in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_params_error(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["compute"]["device"] = "cuda"
    (project / "cuda.yaml").write_text(yaml.safe_dump(params))
    result = run(["rvpt", "stage", "pretrain", "--clean", "--params", "cuda.yaml"], project, check=False)
    assert result.returncode == 2 and "compute.device: cuda requested" in result.stderr
