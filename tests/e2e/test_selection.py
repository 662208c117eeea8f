"""The defender never has the trigger: nothing a defense trains or keeps depends on it.

Tune reads the attack's trigger only to log validation ASR as a diagnostic. Swapping the trigger
for another one must leave every trained tensor, and the validation CA, exactly as they were.
"""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import call, copy_of


@pytest.mark.parametrize("defense, trained_file", [("rvpt", "prompts.safetensors"),
                                                   ("cleanclip", "open_clip_model.safetensors")])
def test_a_different_trigger_changes_no_trained_tensor(reproduced, tmp_path, defense, trained_file):
    root = copy_of(reproduced, tmp_path)
    folder = root / "defended" / defense / "badnet"
    before, summary = load_file(folder / trained_file), json.loads((folder / "tune.json").read_text())

    trigger = root / "data" / "poisoned" / "badnet" / "trigger.safetensors"
    state = load_file(trigger)
    save_file({"patch": 1 - state["patch"]}, str(trigger), metadata={"kind": "badnet"})
    code, _, err = call(root, "stage", "tune", "--attack", "badnet", "--defense", defense)
    assert code == 0, err

    after, again = load_file(folder / trained_file), json.loads((folder / "tune.json").read_text())
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert again["val_clean_accuracy"] == summary["val_clean_accuracy"]
    assert {k: v for k, v in again.items() if "attack_success" not in k and k != "mlflow_run_id"} == \
        {k: v for k, v in summary.items() if "attack_success" not in k and k != "mlflow_run_id"}
