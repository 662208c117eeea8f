"""Each defense as params.yaml configures it: fitted and saved the same way for `rvpt stage tune`
and `rvpt defend` (its params block is its whole configuration; where it runs comes from
`compute`, and the frozen passes take evaluate.batch_size images at a time), and a tune cell's
defended model read back the same way wherever it is scored or scanned."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.store import artifacts, paths
from pipeline.config.defenses import defense
from pipeline.config.params import Params
from rvpt import compute
from rvpt.defenses import registry
from rvpt.defenses.base import Defended
from rvpt.defenses.registry import KINDS
from rvpt.errors import BadInput
from rvpt.resume import Checkpointing


def settings(params: Params, name: str, checkpointing: Checkpointing | None = None):
    """The defense's Config: its params block, and where and how it runs."""
    spec = defense(params, name)
    return KINDS[spec.kind].Config(**spec.settings(), seed=params.tune.seed, checkpointing=checkpointing,
                                   placement=compute.placement(params.compute.device, params.compute.precision),
                                   inference_batch=params.evaluate.batch_size)


def fit(params: Params, name: str, model, data, tokenize, templates: list[str], desc: str,
        checkpointing: Checkpointing | None = None):
    """(defended model, training history)."""
    torch.manual_seed(params.tune.seed)
    kind = KINDS[defense(params, name).kind]
    return kind.fit(model, data, tokenize, templates, settings(params, name, checkpointing), desc=desc)


def save(params: Params, name: str, defended, history: dict, folder: Path, model_cfg: dict,
         metadata: dict[str, str]) -> None:
    """What the defense trained, and its loss curve, into `folder`."""
    KINDS[defense(params, name).kind].save(defended.cpu(), folder, model_cfg, metadata)
    if history.get("loss"):
        artifacts.write_curve(folder / "loss.csv", history["loss"])


def tune_record(attack_name: str, defense_name: str) -> dict:
    """The cell's tune.json: its defense kind, shots, trainable parameters and MLflow run id."""
    made_by = f"rvpt stage tune --attack {attack_name} --defense {defense_name}"
    return artifacts.read_json(paths.defended(attack_name, defense_name) / "tune.json", made_by)


def load_defended(params: Params, attack_name: str, defense_name: str, model, tokenize) -> tuple[Defended, dict]:
    """The cell's defended model, built on its backdoored `model` (left as it is), and its tune.json."""
    folder = paths.defended(attack_name, defense_name)
    made_by = f"rvpt stage tune --attack {attack_name} --defense {defense_name}"
    tuned = tune_record(attack_name, defense_name)
    kind = defense(params, defense_name).kind
    if tuned.get("kind") != kind:
        raise BadInput(f"{folder}: made by defense kind {tuned.get('kind')!r}, params say {kind!r} "
                       f"(rerun `{made_by}`)")
    try:
        return KINDS[kind].load(model, folder, tokenize, params.model.templates), tuned
    except (ValueError, KeyError, RuntimeError) as error:  # BadInput passes through as it is
        raise BadInput(f"{folder}: {error}") from None


def pairs_needed(params: Params, name: str) -> int:
    """Clean image-text pairs the defense reads beside the shots (data.defender_pairs is their supply)."""
    return registry.pairs_needed(KINDS[defense(params, name).kind], settings(params, name))
