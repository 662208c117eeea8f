"""Defenses against backdoors, one module each."""
from rvpt.defenses.prompt_tuning import PromptTuningConfig, freeze, tune_prompts

__all__ = ["PromptTuningConfig", "freeze", "tune_prompts"]
