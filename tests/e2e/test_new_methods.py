"""Adding a defense or an attack is one module and its params.yaml block: the registries find the
module (rvpt/discovery.py), params.yaml's validation is built from its declaration, and every stage
runs it. A toy of each goes through the whole pipeline in a copy of the project, with nothing else
in the project edited."""
import json
import subprocess

import yaml
from conftest import copy_of, environment, run

TOY_DEFENSE = '''"""A toy defense: the backdoored model zero-shot, its class embeddings sharpened by one setting."""
from dataclasses import dataclass

from rvpt.defenses.base import ZeroShot, freeze
from rvpt.defenses.loop import Schedule
from rvpt.settings import setting

KIND = "toy"


@dataclass(kw_only=True)
class Config(Schedule):
    sharpness: float = setting(gt=0, le=10, doc="what the toy would do with it")


def fit(model, data, tokenize, templates, cfg, desc="tune"):
    freeze(model)
    return ZeroShot(model, tokenize, templates), {"loss": [cfg.sharpness] * cfg.epochs}


def trained(defended):
    return {}


def save(defended, folder, model_cfg, metadata):
    (folder / "toy.txt").write_text("nothing trained")


def load(model, folder, tokenize, templates):
    return ZeroShot(model, tokenize, templates)
'''

TOY_ATTACK = '''"""A toy attack: a white patch in the top-left corner."""
import torch

from rvpt.attacks.patch import PatchAttack


class WhiteCorner(PatchAttack):
    name = "toy_corner"

    def __init__(self, image_size: int, size: float = 0.25, seed: int = 0):
        super().__init__(image_size, size, "corner", seed)
        self.patch = torch.ones(3, self.side, self.side)
'''


def test_a_new_defense_and_a_new_attack_are_one_module_and_one_params_block_each(reproduced, tmp_path):
    project = copy_of(reproduced, tmp_path)
    status = ["git", "status", "--porcelain", "--untracked-files=all"]
    before = set(subprocess.run(status, cwd=project, capture_output=True, text=True).stdout.splitlines())
    (project / "rvpt" / "defenses" / "toy.py").write_text(TOY_DEFENSE)
    (project / "rvpt" / "attacks" / "toy_corner.py").write_text(TOY_ATTACK)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["defenses"]["toy"] = {"kind": "toy", "epochs": 2, "batch_size": 8, "lr": 0.1, "weight_decay": 0.0,
                                 "sharpness": 2.0}
    params["attacks"]["toy_corner"] = {"kind": "toy_corner", "rate": 0.05, "options": {"size": 0.25}}
    params["run"] = {"attacks": ["badnet", "toy_corner"], "defenses": ["rvpt", "toy"]}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = set(subprocess.run(status, cwd=project, capture_output=True, text=True).stdout.splitlines()) - before
    assert sorted(line[3:] for line in changed) == ["params.yaml", "rvpt/attacks/toy_corner.py", "rvpt/defenses/toy.py"]

    env = environment({"PYTHONPATH": str(project)})  # the project's own code runs, its new modules too
    run(["dvc", "repro"], project, env)
    rows = json.loads((project / "results" / "summary.json").read_text())["rows"]
    cells = {(row["attack"], row["defense"]) for row in rows}
    assert {("toy_corner", "toy"), ("badnet", "toy"), ("toy_corner", "rvpt")} <= cells
    assert (project / "defended" / "toy" / "toy_corner" / "toy.txt").is_file()

    # Its declaration is its validation: a bound it declares is held in params.yaml.
    params["defenses"]["toy"]["sharpness"] = 50.0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    refused = run(["rvpt", "stage", "check"], project, env, check=False)
    assert refused.returncode == 2 and "defenses.toy.sharpness" in refused.stderr
