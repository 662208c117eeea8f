"""Defenses against backdoors, one module each, behind one interface.

Every module has a `Config` dataclass and:
  fit(model, data, tokenize, templates, cfg, desc) -> (Defended, history)
  trained(defended) -> {name: tensor} of what the defense trained (and counts as trainable)
  save(defended, folder, model_cfg, metadata) / load(model, folder, tokenize, templates)
"""
from __future__ import annotations

from rvpt.defenses import cleanclip, coop, finetune, linear_probe, none, prompt_tuning
from rvpt.defenses.base import Defended, ZeroShot, freeze
from rvpt.defenses.loop import DefenderData

KINDS = {"none": none, "prompt": prompt_tuning, "linear_probe": linear_probe, "finetune": finetune,
         "cleanclip": cleanclip, "coop": coop}

__all__ = ["DefenderData", "Defended", "KINDS", "ZeroShot", "freeze"]
