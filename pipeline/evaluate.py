"""Stage `evaluate`: CA on the clean test split and ASR on its triggered non-target images.

One row per evaluated model: each backdoored model undefended (defense "none"), then under
every defense. Writes results/summary.json (DVC metrics) and a readable results/summary.md.
"""
from __future__ import annotations

from pipeline import artifacts, paths
from pipeline.evaluation import class_embeddings, load_backdoored, load_split, scorer
from pipeline.params import Params
from pipeline.tracking import stage_run
from rvpt.prompts import PromptedVisionEncoder, load_prompts


def markdown(rows: list[dict]) -> str:
    lines = ["| attack | defense | shots | CA | ASR | trainable params |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['attack']} | {row['defense']} | {row['shots']} | {100 * row['clean_accuracy']:.2f} | "
                     f"{100 * row['attack_success_rate']:.2f} | {row['trainable_params']} |")
    return "\n".join(lines) + "\n\nCA: top-1 accuracy on the clean test split. ASR: share of triggered test images "\
        "whose true class is not the target that are classified as the target.\n"


def run(params: Params) -> str:
    images, labels = load_split(params, "test")
    rows, upstream = [], {}
    for attack_name in params.run.attacks:
        model, upstream[f"upstream.pretrain.{attack_name}"] = load_backdoored(attack_name)
        score = scorer(params, attack_name, images, labels, class_embeddings(params, model))
        report = score(model.encode_image)
        rows.append({"attack": attack_name, "defense": "none", "shots": 0, **report,
                     "trainable_params": 0, "trainable_fraction": 0.0})
        for defense_name in params.run.defenses:
            folder = paths.defended(attack_name, defense_name)
            made_by = f"rvpt stage tune --attack {attack_name} --defense {defense_name}"
            tuned = artifacts.read_json(folder / "tune.json", made_by)
            upstream[f"upstream.tune.{attack_name}-{defense_name}"] = tuned["mlflow_run_id"]
            prompts, first_block, _ = load_prompts(artifacts.require(folder / "prompts.safetensors", made_by))
            encoder = PromptedVisionEncoder(model.visual, prompts, first_block).eval()
            report = score(encoder)
            rows.append({"attack": attack_name, "defense": defense_name, "shots": tuned["shots"], **report,
                         "trainable_params": tuned["trainable_params"],
                         "trainable_fraction": tuned["trainable_fraction"]})
    logged = {"attacks": params.run.attacks, "defenses": params.run.defenses, "evaluate": params.evaluate.model_dump()}
    with stage_run("evaluate", params.tracking.experiment, logged, upstream) as log:
        paths.RESULTS.mkdir(exist_ok=True)
        artifacts.write_json(paths.SUMMARY, {"rows": rows})
        # The same numbers keyed attack -> defense, because `dvc exp show` cannot display lists.
        artifacts.write_json(paths.METRICS, {
            a: {r["defense"]: {"clean_accuracy": r["clean_accuracy"], "attack_success_rate": r["attack_success_rate"]}
                for r in rows if r["attack"] == a} for a in params.run.attacks})
        (paths.RESULTS / "summary.md").write_text(markdown(rows))
        for row in rows:
            for key in ("clean_accuracy", "attack_success_rate"):
                log.metric(f"{row['attack']}.{row['defense']}.{key}", row[key])
        log.artifact(paths.SUMMARY)
        log.artifact(paths.RESULTS / "summary.md")
    best = ", ".join(f"{r['attack']}/{r['defense']} CA {r['clean_accuracy']:.3f} ASR {r['attack_success_rate']:.3f}"
                     for r in rows)
    return f"wrote {paths.SUMMARY}: {best}"
