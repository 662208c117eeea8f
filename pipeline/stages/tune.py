"""Stage `tune`: one defense on each backdoored CLIP (a cell per attack, each its own MLflow run),
with the defender's few-shot clean images (and, for CleanCLIP, the defender's clean image-text
pairs). One DVC stage per defense: `dvc exp run -S defenses.rvpt.alpha=1` reruns one stage.

Writes what the defense trained (prompts, a linear head, a text context, or a whole open_clip
model) and tune.json. Training runs its fixed schedule and keeps the last state: nothing is
selected here. Validation CA is logged; validation ASR is logged as a diagnostic only (the
defender never has the trigger). The test split is never read here. A cell whose inputs did not
change since it was last trained (pipeline/memo.py) is read back, not trained again: after an
edit to one attack, the other attacks' cells of every defense stage are copies.
"""
from __future__ import annotations

import numpy as np

from pipeline import artifacts, defending, paths
from pipeline.evaluation import Scorer, load_backdoored
from pipeline.memo import UNUSED, Memo
from pipeline.params import Params
from pipeline.splits import load_fewshot
from pipeline.tracking import stage_run
from rvpt import compute, models
from rvpt.defenses import KINDS, DefenderData
from rvpt.resume import Checkpointing, fingerprint

PAIRS = paths.CLEAN / "pairs.parquet"


def defender_data(params: Params, defense) -> DefenderData:
    images, labels = load_fewshot(params)
    data = DefenderData(images, labels, params.data.class_names)
    if defense.kind == "cleanclip" and defense.pairs == "pairs":
        table = artifacts.read_table(PAIRS, "rvpt stage download").slice(0, defense.budget)
        data.pair_images, kept = artifacts.decode_pixels(table, params.data, str(PAIRS))
        data.pair_captions = table.take(kept).column("caption").to_pylist()
    return data


def checkpointing(params: Params, attack_name: str, defense_name: str) -> Checkpointing:
    spec = params.defenses[defense_name]
    inputs = [paths.backdoored(attack_name) / models.WEIGHTS_NAME, paths.FEWSHOT / "train.parquet"]
    if spec.kind == "cleanclip" and spec.pairs == "pairs":
        inputs.append(PAIRS)
    settings = [params.seed, params.tune.seed, params.threads, params.sample.shots, spec.model_dump(),
                params.model.templates, params.compute.model_dump(exclude={"workers"}), params.evaluate.batch_size]
    return Checkpointing(paths.CHECKPOINTS / f"tune-{attack_name}-{defense_name}.pt", params.tune.checkpoint_every,
                         fingerprint(settings, inputs))


def shared(params: Params) -> tuple[Memo, Scorer]:
    """What every cell of one command reads: the memo of trained cells, keyed by their inputs
    (every param but the other cells' blocks, the data, the code), and the validation split,
    decoded once for all cells."""
    data = [paths.FEWSHOT / "train.parquet", paths.DOWNSTREAM / "val.parquet"] + ([PAIRS] if PAIRS.exists() else [])
    return Memo("tune", params, data, unused=UNUSED + ("scan",)), Scorer(params, "val")


def needs(params: Params, attack_name: str, defense_name: str):
    """Upstream outputs (with the command that makes each) and the output, for artifacts.preflight."""
    spec = params.defenses[defense_name]
    inputs = [(paths.backdoored(attack_name) / "pretrain.json", f"rvpt stage pretrain --attack {attack_name}"),
              (paths.FEWSHOT / "train.parquet", "rvpt stage sample"), (paths.FEWSHOT / "sample.json", "rvpt stage sample"),
              (paths.poisoned(attack_name) / "trigger.safetensors", f"rvpt stage poison --attack {attack_name}"),
              (paths.DOWNSTREAM / "val.parquet", "rvpt stage download")]
    if spec.kind == "cleanclip" and spec.pairs == "pairs":
        inputs.append((PAIRS, "rvpt stage download"))
    return inputs, paths.defended(attack_name, defense_name)


class _Miss(Exception):
    pass


def read_back(trained: Memo, cell: str, key: str, folder) -> bool:
    """The cell's outputs from the memo, written whole; on a miss the staging folder, with whatever
    was copied into it, is discarded and the cell's folder left as it was."""
    try:
        with artifacts.atomic_dir(folder) as out:
            if not trained.get_folder(cell, key, out):
                raise _Miss
    except _Miss:
        return False
    return True


def run(params: Params, attack_name: str, defense_name: str, trained: Memo, val: Scorer) -> str:
    cell, folder = f"{attack_name}-{defense_name}", paths.defended(attack_name, defense_name)
    inputs = trained.key(attack_name, defense_name, [paths.backdoored(attack_name),
                                                     paths.poisoned(attack_name) / "trigger.safetensors"])
    if compute.world_size() == 1 and read_back(trained, cell, inputs, folder):  # ranks of a DDP run could disagree
        return f"read back {folder} (inputs unchanged since it was trained)"
    spec = params.defenses[defense_name]
    kind = KINDS[spec.kind]
    resumable = checkpointing(params, attack_name, defense_name)
    model, pretrain_run = load_backdoored(attack_name)
    data = defender_data(params, spec)
    sample_run = artifacts.read_json(paths.FEWSHOT / "sample.json", "rvpt stage sample")["mlflow_run_id"]
    tokenize = models.tokenizer(params.model.config)

    logged = {"seed": params.seed, "defense_seed": params.tune.seed, "attack_name": attack_name, "defense_name": defense_name,
              "shots": params.sample.shots, "defense": spec.model_dump()}
    tags = {"attack": attack_name, "defense": defense_name, "upstream.pretrain": pretrain_run,
            "upstream.sample": sample_run}
    with stage_run("tune", params.tracking.experiment, logged, tags, name=f"tune@{cell}") as log:
        log.inputs({"defender's shots": paths.FEWSHOT / "train.parquet"}, "training")
        defended, history = defending.fit(params, defense_name, model, data, tokenize, params.model.templates,
                                          f"tune {cell}", resumable)
        if not compute.is_main():
            return f"rank {compute.rank()} done"
        trainable = models.count_parameters(kind.trained(defended).values())
        report = val.report(defended, attack_name)
        summary = {"attack": attack_name, "defense": defense_name, "kind": spec.kind, "shots": params.sample.shots,
                   "defense_seed": params.tune.seed, "trainable_params": trainable,
                   "trainable_fraction": trainable / models.count_parameters(model.parameters()),
                   **{f"final_{k}": float(np.mean(v[-10:])) for k, v in history.items()},
                   **{f"val_{k}": report[k] for k in ("clean_accuracy", "attack_success_rate")}}
        with artifacts.atomic_dir(folder) as out:
            defending.save(params, defense_name, defended, history, out, params.model.config,
                           {"attack": attack_name, "defense": defense_name, "kind": spec.kind,
                            "shots": str(params.sample.shots)})
            artifacts.write_json(out / "tune.json", {**summary, "mlflow_run_id": log.id})
            for path in sorted(out.iterdir()):
                log.artifact(path)
        trained.put_folder(cell, inputs, folder)
        log.model(backbone=paths.backdoored(attack_name), defense=folder,
                  kind=spec.kind, classes=params.data.class_names, templates=params.model.templates,
                  image_size=params.data.image_size, registered_name=f"rvpt-{attack_name}-{defense_name}")
        for key, values in history.items():
            log.series(key, values, max(1, len(values) // 500))
        for key, value in summary.items():
            if isinstance(value, float | int) and not isinstance(value, bool):
                log.metric(key, value)
        log.metric("resumed_from_step", resumable.resumed)
    resumable.clear()
    resumed = f" (resumed from step {resumable.resumed})" if resumable.resumed else ""
    return (f"wrote {folder}{resumed}: val CA {report['clean_accuracy']:.3f}, "
            f"val ASR {report['attack_success_rate']:.3f}, {trainable} trainable params")
