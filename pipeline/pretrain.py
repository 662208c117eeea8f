"""Stage `pretrain`: the victim's CLIP training.

`--clean` trains the clean base model from scratch on the clean corpus. With an attack, the
victim fine-tunes that clean model on the poisoned corpus (the paper's threat model), or
trains from scratch on it when pretrain.init is `scratch`.
"""
from __future__ import annotations

import hashlib
import json

from pipeline import artifacts, paths
from pipeline.evaluation import Scorer, zero_shot
from pipeline.params import Params
from pipeline.tracking import stage_run
from rvpt import models
from rvpt.resume import Checkpointing
from rvpt.train import ClipTrainConfig, train_clip


def fingerprint(params: Params, schedule, inputs: list) -> str:
    """Everything that determines this run bit for bit: settings, threads, and the bytes of its data and start weights."""
    digest = hashlib.sha256(json.dumps([params.seed, params.threads, params.model.config, schedule.model_dump()],
                                       sort_keys=True).encode())
    for path in sorted(p for folder in inputs for p in ([folder] if folder.is_file() else folder.rglob("*"))
                       if p.is_file()):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run(params: Params, attack_name: str | None) -> str:
    clean = attack_name is None
    schedule = params.pretrain.clean if clean or params.pretrain.init == "scratch" else params.pretrain.poisoned
    source = paths.CORPUS if clean else paths.poisoned(attack_name) / "corpus"
    destination = paths.CLEAN_MODEL if clean else paths.backdoored(attack_name)
    made_by = "rvpt stage download" if clean else f"rvpt stage poison --attack {attack_name}"

    table = artifacts.read_table(source, made_by)
    if clean or params.pretrain.init == "scratch":
        model = models.build(params.model.config, seed=params.seed)
        start = "scratch"
    else:
        artifacts.require(paths.CLEAN_MODEL, "rvpt stage pretrain --clean")
        model, _ = models.load(paths.CLEAN_MODEL)
        start = str(paths.CLEAN_MODEL)
    images, kept = artifacts.decode_images(table, params.data, str(source))
    table = table.take(kept)
    tokens = models.tokenizer(params.model.config)(table.column("caption").to_pylist())

    logged = {"seed": params.seed, "start": start, "schedule": schedule.model_dump(),
              "model": params.model.config, "attack_name": attack_name or "none"}
    tags = {"attack": attack_name or "none", "defense": "none"}
    inputs = [source] if start == "scratch" else [source, paths.CLEAN_MODEL / models.WEIGHTS_NAME]
    checkpointing = Checkpointing(paths.CHECKPOINTS / f"pretrain-{attack_name or 'clean'}.pt",
                                  params.pretrain.checkpoint_every, fingerprint(params, schedule, inputs))
    with stage_run("pretrain", params.tracking.experiment, logged, tags) as log:
        config = ClipTrainConfig(seed=params.seed, **schedule.model_dump())
        losses, resumed = train_clip(model, images, tokens, config, desc=f"pretrain {attack_name or 'clean'}",
                                     checkpointing=checkpointing)
        report = Scorer(params, "val").report(zero_shot(params, model), attack_name)
        report = {k: v for k, v in report.items() if k in ("clean_accuracy", "attack_success_rate")}
        with artifacts.atomic_dir(destination) as out:
            models.save(model, params.model.config, out)
            artifacts.write_curve(out / "loss.csv", losses)
            artifacts.write_json(out / "pretrain.json", {**report, "final_loss": sum(losses[-50:]) / len(losses[-50:]),
                                                          "mlflow_run_id": log.id})
            log.artifact(out / "loss.csv")
        log.series("loss", losses, every=max(1, len(losses) // 500))
        for key, value in report.items():
            log.metric(f"val_{key}", value)
        log.metric("resumed_from_step", resumed)
    checkpointing.clear()
    scores = ", ".join(f"val {k} {v:.3f}" for k, v in report.items())
    resumed_note = f" (resumed from step {resumed})" if resumed else ""
    return f"wrote {destination}{resumed_note}: {scores}"
