"""Stage `tune`: a defense on the backdoored CLIP with the defender's few-shot clean images.

The prompt defenses (rvpt, vpt) freeze every CLIP weight and train deep visual prompts;
their only output is the prompts file. Validation CA/ASR are logged for model selection.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline import artifacts, paths
from pipeline.evaluation import class_embeddings, load_backdoored, zero_shot_report
from pipeline.params import Params
from pipeline.tracking import stage_run
from rvpt import models
from rvpt.defenses import PromptTuningConfig, tune_prompts
from rvpt.errors import BadInput
from rvpt.prompts import save_prompts
from rvpt.sampling import take_shots


def load_fewshot(params: Params) -> tuple[torch.Tensor, torch.Tensor]:
    path = paths.FEWSHOT / "train.parquet"
    table = artifacts.read_table(path, "rvpt stage sample")
    try:
        rows = take_shots(table.column("shot_rank").to_numpy(), params.sample.shots)
    except ValueError as error:
        raise BadInput(f"--shots {params.sample.shots}: {error} (rerun `rvpt stage sample` with more)") from None
    subset = table.take(rows)
    images = artifacts.decode_images(subset, params.data.image_size, str(path))
    return images, torch.from_numpy(artifacts.labels(subset))


def run(params: Params, attack_name: str, defense_name: str) -> str:
    defense = params.defenses[defense_name]
    model, pretrain_run = load_backdoored(attack_name)
    images, labels = load_fewshot(params)
    sample_run = artifacts.read_json(paths.FEWSHOT / "sample.json", "rvpt stage sample")["mlflow_run_id"]

    config = PromptTuningConfig(alpha=defense.alpha, seed=params.seed, **params.tune.model_dump())
    logged = {"seed": params.seed, "attack_name": attack_name, "defense_name": defense_name,
              "shots": params.sample.shots, "tune": vars(config)}
    tags = {"attack": attack_name, "defense": defense_name, "upstream.pretrain": pretrain_run,
            "upstream.sample": sample_run}
    with stage_run("tune", params.tracking.experiment, logged, tags) as log:
        torch.manual_seed(params.seed)
        embeds = class_embeddings(params, model)
        encoder, history = tune_prompts(model, images, labels, embeds, config, desc=f"tune {attack_name}-{defense_name}")
        trainable = encoder.prompts.weight.numel()
        total = models.count_parameters(model.parameters())
        report = zero_shot_report(params, model, attack_name, split="val", encode=encoder, embeds=embeds)
        summary = {"attack": attack_name, "defense": defense_name, "shots": params.sample.shots,
                   "trainable_params": trainable, "trainable_fraction": trainable / total,
                   "final_ce": float(np.mean(history["ce"][-10:])), "final_fr": float(np.mean(history["fr"][-10:])),
                   **{f"val_{k}": v for k, v in report.items()}}
        with artifacts.atomic_dir(paths.defended(attack_name, defense_name)) as out:
            save_prompts(out / "prompts.safetensors", encoder.prompts, config.first_block,
                         {"attack": attack_name, "defense": defense_name, "alpha": config.alpha,
                          "shots": params.sample.shots})
            artifacts.write_curve(out / "loss.csv", history["loss"])
            artifacts.write_json(out / "tune.json", {**summary, "mlflow_run_id": log.id})
            log.artifact(out / "prompts.safetensors")
        every = max(1, len(history["loss"]) // 500)
        for key in ("loss", "ce", "fr", "train_accuracy"):
            log.series(key, history[key], every)
        for key in ("trainable_params", "trainable_fraction", "final_ce", "final_fr", "val_clean_accuracy",
                    "val_attack_success_rate"):
            log.metric(key, summary[key])
    return (f"wrote {paths.defended(attack_name, defense_name)}: val CA {report['clean_accuracy']:.3f}, "
            f"val ASR {report['attack_success_rate']:.3f}, {trainable} trainable params")
