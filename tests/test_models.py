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
    with pytest.raises(BadInput, match=r"visual.proj is \(32, 16\).*but \(32, 32\)"):
        models.load(tmp_path / "ckpt")


def test_pickle_checkpoints_are_refused(tmp_path):
    model = models.build(TINY_MODEL, seed=1)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(BadInput, match="only .safetensors"):
        models.load_weights(model, tmp_path / "weights.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BadInput, match="not a valid safetensors"):
        models.load_weights(model, tmp_path / "bad.safetensors")
