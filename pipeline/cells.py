"""A tune cell's defended model, read back the same way wherever it is scored or scanned."""
from __future__ import annotations

from pipeline import artifacts, paths
from pipeline.params import Params
from rvpt.defenses import KINDS, Defended
from rvpt.errors import BadInput


def tune_record(attack_name: str, defense_name: str) -> dict:
    """The cell's tune.json: its defense kind, shots, trainable parameters and MLflow run id."""
    made_by = f"rvpt stage tune --attack {attack_name} --defense {defense_name}"
    return artifacts.read_json(paths.defended(attack_name, defense_name) / "tune.json", made_by)


def load_defended(params: Params, attack_name: str, defense_name: str, model, tokenize) -> tuple[Defended, dict]:
    """The cell's defended model, built on its backdoored `model` (left as it is), and its tune.json."""
    folder = paths.defended(attack_name, defense_name)
    made_by = f"rvpt stage tune --attack {attack_name} --defense {defense_name}"
    tuned = tune_record(attack_name, defense_name)
    kind = params.defenses[defense_name].kind
    if tuned.get("kind") != kind:
        raise BadInput(f"{folder}: made by defense kind {tuned.get('kind')!r}, params say {kind!r} "
                       f"(rerun `{made_by}`)")
    try:
        return KINDS[kind].load(model, folder, tokenize, params.model.templates), tuned
    except (ValueError, KeyError, RuntimeError) as error:  # BadInput passes through as it is
        raise BadInput(f"{folder}: {error}") from None
