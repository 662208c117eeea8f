"""Stage `tune`: one defense on each backdoored CLIP (a cell per attack, each its own MLflow run),
with the defender's few-shot clean images (and, for CleanCLIP, the defender's clean image-text
pairs). One DVC stage per defense: `dvc exp run -S defenses.rvpt.alpha=1` reruns one stage.

Writes what the defense trained (prompts, a linear head, a text context, or a whole open_clip
model) and tune.json. Training runs its fixed schedule and keeps the last state: nothing is
selected here. Validation CA is logged; validation ASR is logged as a diagnostic only (the
defender never has the trigger). The test split is never read here. A cell whose inputs did not
change since it was last trained (pipeline/store/memo.py) is read back, not trained again: after an
edit to one attack, the other attacks' cells of every defense stage are copies.
"""
from __future__ import annotations

import numpy as np

from pipeline.methods import defenses
from pipeline.store import artifacts, paths
from pipeline.scoring.scorer import Scorer, load_backdoored
from pipeline.store.memo import UNUSED, Memo
from pipeline.config.defenses import defense
from pipeline.config.params import Params
from pipeline.data.splits import load_fewshot
from pipeline.tracking.registry import BACKBONE, DEFENDED
from pipeline.tracking.runs import stage
from rvpt import compute, models
from rvpt.defenses.loop import DefenderData
from rvpt.defenses.registry import KINDS
from rvpt.resume import Checkpointing, fingerprint

PAIRS = paths.CLEAN / "pairs.parquet"


def defender_data(params: Params, defense_name: str) -> DefenderData:
    """The shots and, for a defense that reads them, the first of the defender's clean image-text pairs."""
    images, labels = load_fewshot(params)
    data = DefenderData(images, labels, params.data.class_names)
    pairs = defenses.pairs_needed(params, defense_name)
    if pairs:
        table = artifacts.read_table(PAIRS, "rvpt stage download").slice(0, pairs)
        data.pair_images, kept = artifacts.decode_pixels(table, params.data, str(PAIRS))
        data.pair_captions = table.take(kept).column("caption").to_pylist()
    return data


def checkpointing(params: Params, attack_name: str, defense_name: str) -> Checkpointing:
    spec = defense(params, defense_name)
    inputs = [paths.backdoored(attack_name) / models.WEIGHTS_NAME, paths.FEWSHOT / "train.parquet"]
    if defenses.pairs_needed(params, defense_name):
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
    inputs = [(paths.backdoored(attack_name) / "pretrain.json", f"rvpt stage pretrain --attack {attack_name}"),
              (paths.FEWSHOT / "train.parquet", "rvpt stage sample"), (paths.FEWSHOT / "sample.json", "rvpt stage sample"),
              (paths.poisoned(attack_name) / "trigger.safetensors", f"rvpt stage poison --attack {attack_name}"),
              (paths.DOWNSTREAM / "val.parquet", "rvpt stage download")]
    if defenses.pairs_needed(params, defense_name):
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


def jobs(params: Params, attack_name: str | None, defense_name: str | None):
    """Every cell of the chosen attacks x defenses (default: `run`'s), defense by defense."""
    attacks = params.select("attacks", attack_name, "--attack")
    chosen = params.select("defenses", defense_name, "--defense")
    for name in chosen:
        defense(params, name)  # each block validated, and held to the model and the data, before any work
    artifacts.preflight(needs(params, a, d) for a in attacks for d in chosen)
    trained, val = shared(params)
    return (run(params, a, d, trained, val) for d in chosen for a in attacks)


def run(params: Params, attack_name: str, defense_name: str, trained: Memo, val: Scorer) -> str:
    cell, folder = f"{attack_name}-{defense_name}", paths.defended(attack_name, defense_name)
    inputs = trained.key(attack_name, defense_name, [paths.backdoored(attack_name),
                                                     paths.poisoned(attack_name) / "trigger.safetensors"])
    if compute.world_size() == 1 and read_back(trained, cell, inputs, folder):  # ranks of a DDP run could disagree
        return f"read back {folder} (inputs unchanged since it was trained)"
    spec = defense(params, defense_name)
    kind = KINDS[spec.kind]
    resumable = checkpointing(params, attack_name, defense_name)
    model, pretrain_run = load_backdoored(attack_name)
    data = defender_data(params, defense_name)
    sample_run = artifacts.read_json(paths.FEWSHOT / "sample.json", "rvpt stage sample")["mlflow_run_id"]
    tokenize = models.tokenizer(params.model.config)

    logged = {"seed": params.seed, "defense_seed": params.tune.seed, "attack_name": attack_name, "defense_name": defense_name,
              "shots": params.sample.shots, "defense": spec.model_dump()}
    tags = {"attack": attack_name, "defense": defense_name, "upstream.pretrain": pretrain_run,
            "upstream.sample": sample_run}
    shots = {"defender's shots": paths.FEWSHOT / "train.parquet"}
    with stage("tune", params, logged, tags, inputs=shots, context="training", run_name=f"tune@{cell}") as log:
        defended, history = defenses.fit(params, defense_name, model, data, tokenize, params.model.templates,
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
        with log.output(folder, logged=None, under=DEFENDED) as out:
            defenses.save(params, defense_name, defended, history, out, params.model.config,
                          {"attack": attack_name, "defense": defense_name, "kind": spec.kind,
                           "shots": str(params.sample.shots)})
            log.record(out / "tune.json", summary)
        trained.put_folder(cell, inputs, folder)
        log.model(backbone=f"runs:/{pretrain_run}/{BACKBONE}", defense=f"runs:/{log.id}/{DEFENDED}",
                  kind=spec.kind, classes=params.data.class_names, templates=params.model.templates,
                  image_size=params.data.image_size, registered_name=f"rvpt-{attack_name}-{defense_name}")
        for key, values in history.items():
            log.series(key, values, max(1, len(values) // 500))
        log.param("resumed_from_step", resumable.resumed)
    resumable.clear()
    resumed = f" (resumed from step {resumable.resumed})" if resumable.resumed else ""
    return (f"wrote {folder}{resumed}: val CA {report['clean_accuracy']:.3f}, "
            f"val ASR {report['attack_success_rate']:.3f}, {trainable} trainable params")
