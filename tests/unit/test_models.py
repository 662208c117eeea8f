import json

import open_clip
import pytest
import torch
from conftest import TINY_MODEL
from safetensors.torch import save_file

from rvpt import models
from rvpt.errors import BadInput


def test_checkpoint_round_trips_through_open_clip_local_dir(tmp_path):
    model = models.build(TINY_MODEL, seed=1)
    models.save(model, TINY_MODEL, tmp_path / "ckpt")
    loaded = open_clip.create_model(f"local-dir:{tmp_path / 'ckpt'}")
    ours, _ = models.load(tmp_path / "ckpt")
    images, text = torch.randn(2, 3, 16, 16), torch.randint(0, 49408, (2, 16))
    with torch.no_grad():
        for other in (loaded, ours):
            other.eval()
            assert torch.equal(other.encode_image(images), model.encode_image(images))
            assert torch.equal(other.encode_text(text), model.encode_text(text))
    preprocess = json.loads((tmp_path / "ckpt" / "open_clip_config.json").read_text())["preprocess_cfg"]
    assert preprocess["size"] == 16


def test_shape_mismatch_names_both_shapes(tmp_path):
    model = models.build(TINY_MODEL, seed=1)
    models.save(model, TINY_MODEL, tmp_path / "ckpt")
    state = {k: v for k, v in model.state_dict().items()}
    state["visual.proj"] = torch.zeros(32, 16)
    save_file(state, str(tmp_path / "ckpt" / models.WEIGHTS_NAME))
    with pytest.raises(BadInput, match=r"visual.proj is \(32, 16\).*but \(32, 32\).*open_clip_config.json"):
        models.load(tmp_path / "ckpt")
    state["visual.proj"] = torch.zeros(32, 32, dtype=torch.float16)
    save_file(state, str(tmp_path / "ckpt" / models.WEIGHTS_NAME))
    with pytest.raises(BadInput, match=r"float16 in the checkpoint but \(32, 32\) torch.float32 in the config"):
        models.load(tmp_path / "ckpt")


class RunsCode:
    """Unpickling this calls exec: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_weights_only_checkpoints_load_and_code_in_them_never_runs(tmp_path):
    model = models.build(TINY_MODEL, seed=1)
    models.save(model, TINY_MODEL, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / models.WEIGHTS_NAME
    # A plain state dict saved by torch.save (DDP-prefixed, inside open_clip's training wrapper) loads.
    weights.unlink()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3},
               tmp_path / "ckpt" / "open_clip_pytorch_model.bin")
    loaded, _ = models.load(tmp_path / "ckpt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    # One that would run code on unpickling is refused, and the code does not run.
    marker = tmp_path / "pwned"
    torch.save({"state_dict": model.state_dict(), "hook": RunsCode(marker)}, tmp_path / "ckpt" / "open_clip_pytorch_model.bin")
    with pytest.raises(BadInput, match="refused, not a weights-only checkpoint"):
        models.load(tmp_path / "ckpt")
    assert not marker.exists()
    # The same pickle under a safetensors name is not parsed as anything but safetensors.
    (tmp_path / "ckpt" / "open_clip_pytorch_model.bin").rename(tmp_path / "ckpt" / models.WEIGHTS_NAME)
    with pytest.raises(BadInput, match="not a valid safetensors"):
        models.load(tmp_path / "ckpt")
    assert not marker.exists()


def test_a_config_asking_for_too_many_parameters_is_refused_before_allocation(tmp_path):
    huge = {**TINY_MODEL, "vision_cfg": {**TINY_MODEL["vision_cfg"], "width": 65536, "layers": 200}}
    models.save(models.build(TINY_MODEL), huge, tmp_path / "ckpt")
    with pytest.raises(BadInput, match="over the limit"):
        models.load(tmp_path / "ckpt")


def test_params_read_the_sizes_every_buildable_open_clip_config_builds():
    # params validation reads these from the dict instead of building the model; they must agree.
    from rvpt import model_config

    checked = 0
    for name in open_clip.list_models():
        config = models.named_config(name)
        try:
            built = models.check_config(config)
        except ValueError:
            continue  # CoCa, EVA and HF-text configs are not plain CLIPs; a stage refuses them when it builds
        grid = getattr(built.visual, "grid_size", None)
        assert (model_config.vision_depth(config), model_config.patch_tokens(config),
                model_config.context_length(config)) == (
            models.vision_depth(built), grid[0] * grid[1] if grid else None, built.context_length), name
        checked += 1
    assert checked > 50


def test_an_unbuildable_config_is_refused_where_a_model_is_built():
    broken = {**TINY_MODEL, "vision_cfg": {**TINY_MODEL["vision_cfg"], "no_such_key": 1}}
    with pytest.raises(BadInput, match="params.yaml: model.config: not a buildable open_clip config"):
        models.from_config(broken, "params.yaml: model.config")
