"""What every study shares: a project made from this repository with changed params, `dvc repro`
in it, and its results read back from the JSON the stages write (never from printed text).

A project is a fresh git + DVC folder holding this repository's pipeline (rvpt/, pipeline/,
profiles/, dvc.yaml) and a params.yaml; its stages run the installed `rvpt`, so run a study from
an unchanged checkout, with the project's virtual environment first on PATH (`uv run`).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CODE = ("rvpt", "pipeline", "profiles")

# A world small enough that a study's whole code path runs in a minute or two (CI's quick mode):
# the numbers it gives mean nothing.
TINY_MODEL = {"embed_dim": 32, "vision_cfg": {"image_size": 16, "layers": 3, "width": 32, "patch_size": 4,
                                              "head_width": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
QUICK = {
    "threads": 1,
    "data": {"classes": ["zero", "one", "two", "three"], "transfer_classes": ["ay", "bee"], "corpus_size": 1200,
             "train_per_class": 10, "val_per_class": 10, "test_per_class": 20, "defender_pairs": 64, "shard_rows": 500},
    "model": {"config": TINY_MODEL},
    "pretrain": {"clean": {"steps": 20, "batch_size": 32, "warmup": 2},
                 "poisoned": {"steps": 10, "batch_size": 32, "warmup": 2}},
    "target": "three",
    "attacks": {name: {"optimise": {"steps": 3, "batch_size": 16, "lr": 0.01, "images": 64}}
                for name in ("badclip", "issba", "handcrafted")},
    "defenses": {name: {"epochs": 1, "batch_size": 8} for name in
                 ("rvpt", "vpt", "rvpt_centred", "rvpt_clipscale", "rvpt_wide", "linear_probe", "finetune", "finetune_fr",
                  "cleanclip", "coop")} | {"cleanclip": {"budget": 64, "epochs": 1, "batch_size": 32}},
    "sample": {"shots": 4},
    "evaluate": {"probe_steps": 20, "layer_images": 32},
    "scan": {"steps": 10, "check_images": 16, "held_out": 20},
}


def merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def default_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def run(command: list[str], cwd: Path, quiet: bool = False) -> None:
    """`command` in `cwd`; `quiet` keeps its output back and shows the end of it only if it fails."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # each project logs to its own mlflow.db
    if not quiet:
        subprocess.run(command, cwd=cwd, env=env, check=True)
        return
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed in {cwd}: {done.stderr.strip()[-1000:]}")


def make_project(root: Path) -> Path:
    """A fresh project at `root` (kept if it exists: a study resumes where it stopped)."""
    if (root / "dvc.yaml").is_file():
        return root
    root.mkdir(parents=True)
    for name in CODE:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    (root / ".gitignore").write_text("/mlflow.db\n/mlruns/\n/.rvpt/\n")
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")  # dvc.yaml's plot templates
    write_params(root, default_params())
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=study", "-c", "user.email=study@rvpt.local", "commit", "-qm", "study"], root)
    return root


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def repro(root: Path, params: dict) -> dict:
    """`dvc repro` with these params; the rows of the results/summary.json it writes."""
    write_params(root, params)
    run(["dvc", "repro"], root)
    return json.loads((root / "results" / "summary.json").read_text())


def keep(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
