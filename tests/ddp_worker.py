"""Run by test_distributed.py, alone or under torchrun: one CLIP training step on a fixed global
batch, and RVPT for two epochs of 9 images in batches of 4, so that each epoch ends on a batch of
one image; rank 0 saves the first CLIP step's gradients, the prompts after RVPT and its losses."""
import sys

import torch

from conftest import TINY_MODEL, defense_settings
from rvpt import compute, models
from rvpt.defenses.loop import DefenderData
from rvpt.defenses.registry import KINDS
from rvpt.train import ClipTrainConfig, train_clip

compute.init("gloo")
torch.set_num_threads(1)
generator = torch.Generator().manual_seed(0)
images = torch.rand(8, 3, 16, 16, generator=generator)
captions = [f"a photo of a {name}" for name in ["zero", "one", "two", "three"] * 2]
model = models.build(TINY_MODEL, seed=0)
tokens = models.tokenizer(TINY_MODEL)(captions)
gradients = {}


def keep_gradients(step):
    if step == 0:
        gradients.update({name: p.grad.detach().clone() for name, p in model.named_parameters()})


train_clip(model, images, tokens, ClipTrainConfig(steps=1, batch_size=8, warmup=0), on_step=keep_gradients)

prompt = KINDS["prompt"]
shots = torch.cat([images, images[:1].flip(-1)])
data = DefenderData(shots, torch.tensor([0, 1, 2, 3] * 2 + [0]), ["zero", "one", "two", "three"])
config = defense_settings("prompt", seed=0, tokens=4, first_block=1, epochs=2, batch_size=4, lr=0.1, alpha=2.0)
defended, history = prompt.fit(models.build(TINY_MODEL, seed=0), data, models.tokenizer(TINY_MODEL), ["a {}"], config)
if compute.is_main():
    torch.save({"clip": gradients, "prompts": defended.encoder.prompts.weight.detach().clone(),
                "losses": torch.tensor(history["loss"]), "world": compute.world_size()}, sys.argv[1])
