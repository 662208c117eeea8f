"""Prints the RVPT study as a markdown table: one row per `dvc exp`, CA/ASR per defense.

Usage: uv run python scripts/study_table.py [EXPERIMENT_NAME_PREFIX ...]
Params come from `dvc exp show --json`; CA/ASR from the latest MLflow `evaluate` run of each
experiment (tag dvc.exp), so the table and `mlflow ui` always agree.
"""
from __future__ import annotations

import json
import subprocess
import sys

import mlflow

from pipeline.tracking import tracking_uri


def experiment_params(prefixes: list[str]) -> dict[str, dict]:
    out = subprocess.run(["dvc", "exp", "show", "--all-commits", "--json"], capture_output=True, text=True, check=True).stdout
    found = {}
    for baseline in json.loads(out):
        if baseline["rev"] == "workspace" and baseline.get("data"):
            found[""] = baseline["data"]["params"]["params.yaml"]["data"]
        for group in baseline.get("experiments") or []:
            for rev in group["revs"]:
                name = rev.get("name") or rev["rev"][:7]
                if rev.get("data") and (not prefixes or any(name.startswith(p) for p in prefixes)):
                    found[name] = rev["data"]["params"]["params.yaml"]["data"]
    return found


def latest_scores(names, experiment: str = "rvpt") -> dict[str, dict[str, float]]:
    client = mlflow.MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    scores = {}
    for name in names:
        runs = client.search_runs([exp.experiment_id], f"tags.`rvpt.stage` = 'evaluate' and tags.`dvc.exp` = '{name}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            # Selection uses the validation split, measured by the tune run this evaluation consumed.
            tune = client.get_run(runs[0].data.tags["upstream.tune.badnet-rvpt"]).data.metrics
            scores[name] = {**runs[0].data.metrics, **{f"val.{k}": v for k, v in tune.items()}}
    return scores


def main() -> None:
    params = experiment_params(sys.argv[1:])
    scores = latest_scores(params)
    print("| run | classes | shots | poison rate | alpha | b | D | epochs | width/embed | RVPT val CA/ASR "
          "| test: undefended CA/ASR | RVPT CA/ASR | VPT CA/ASR |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in sorted(scores):
        p, m = params[name], scores[name]
        cfg = p["model"]["config"]
        rvpt = p.get("tune") or p["defenses"]["rvpt"]  # prompt settings moved into the defense in the matrix
        cell = lambda d: f"{100 * m[f'badnet.{d}.clean_accuracy']:.1f} / {100 * m[f'badnet.{d}.attack_success_rate']:.1f}"
        print(f"| {name or 'workspace (default)'} | {len(p['data']['classes'])} | {p['sample']['shots']} | {p['attacks']['badnet']['rate']} | {p['defenses']['rvpt']['alpha']} | {rvpt['tokens']} "
              f"| {rvpt['first_block']} | {rvpt['epochs']} | {cfg['vision_cfg']['width']}/{cfg['embed_dim']} "
              f"| {100 * m['val.val_clean_accuracy']:.1f} / {100 * m['val.val_attack_success_rate']:.1f} | {cell('none')} | {cell('rvpt')} | {cell('vpt')} |")


if __name__ == "__main__":
    main()
