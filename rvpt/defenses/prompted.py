"""A frozen CLIP whose image tower runs with deep visual prompts (RVPT, VPT)."""
from __future__ import annotations

from rvpt.defenses.base import ZeroShot
from rvpt.prompts import PromptedVisionEncoder


class Prompted(ZeroShot):
    def __init__(self, model, tokenize, templates, encoder: PromptedVisionEncoder):
        super().__init__(model, tokenize, templates)
        self.encoder = encoder

    def encode_image(self, images):
        return self.encoder(images)

    def block_cls(self, images):
        return self.encoder.block_cls(images)
