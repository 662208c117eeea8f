"""Stage `pretrain`: the victim's CLIP training.

`--clean` trains the clean base model from scratch on the clean corpus, or, with
model.pretrained, takes the pretrained weights as the clean model. With an attack, the victim
fine-tunes that clean model on the poisoned corpus (the paper's threat model), or trains from
scratch on it when pretrain.init is `scratch`; an attack that edits weights (the handcrafted
backdoor) edits the clean model instead, with no training. A corpus too large to hold decoded
(data.preload_max_gib) is decoded batch by batch by compute.workers DataLoader processes.
Under torchrun (compute.processes > 1) every process trains; only rank 0 writes and logs.
"""
from __future__ import annotations

from safetensors.torch import save_file

from pipeline import artifacts, paths, sources
from pipeline.evaluation import Scorer, load_attack, zero_shot
from pipeline.params import Params
from pipeline.tracking import stage_run
from pipeline.triggers import attacker_images, edits_weights
from rvpt import compute, models, pretrained
from rvpt.attacks import handcrafted
from rvpt.images import LazyImages
from rvpt.resume import Checkpointing, fingerprint
from rvpt.train import ClipTrainConfig, train_clip
from rvpt.zeroshot import class_embeddings


def corpus_images(params: Params, table, source):
    """The corpus's images decoded up front when they fit in data.preload_max_gib, else on demand."""
    if params.data.fits_decoded(table.num_rows):
        images, kept = artifacts.decode_images(table, params.data, str(source))
        return images, table.take(kept)
    return LazyImages(table.column("image"), params.data.image_size, str(source), params.data.max_image_pixels), table


def take_pretrained(params: Params) -> str:
    """`pretrain --clean` with model.pretrained: the pretrained weights are the clean model."""
    weights = pretrained.weights_file(params.model.name, params.model.pretrained)
    model = models.from_weights(params.model.config, weights, f"model.pretrained ({weights})")
    logged = {"seed": params.seed, "start": str(weights), "model": params.model.config,
              "pretrained": params.model.pretrained, "attack_name": "none"}
    with stage_run("pretrain", params.tracking.experiment, logged, {"attack": "none", "defense": "none"}) as log:
        report = Scorer(params, "val").report(zero_shot(params, model), None)
        with artifacts.atomic_dir(paths.CLEAN_MODEL) as out:
            models.save(model, params.model.config, out)
            artifacts.write_json(out / "pretrain.json", {**report, "pretrained": params.model.pretrained,
                                                          "weights_sha256": sources.sha256_of(weights),
                                                          "mlflow_run_id": log.id})
        log.metric("val_clean_accuracy", report["clean_accuracy"])
    return f"wrote {paths.CLEAN_MODEL} from {params.model.name}/{params.model.pretrained}: " \
           f"val clean_accuracy {report['clean_accuracy']:.3f}"


EDIT_FILE = "edit.safetensors"


def edit_weights(params: Params, attack_name: str) -> str:
    """An attack that edits weights: the clean model, edited with the trigger the poison stage
    optimised, on the same attacker images (rvpt/attacks/handcrafted.py)."""
    model, _ = models.load(artifacts.require(paths.CLEAN_MODEL, "rvpt stage pretrain --clean"))
    attack = load_attack(params, attack_name)
    images, labels = attacker_images(params, attack_name, artifacts.read_table(paths.CORPUS, "rvpt stage download"))
    names = params.data.class_names
    text = class_embeddings(model, models.tokenizer(params.model.config), names, params.model.templates)
    logged = {"seed": params.seed, "start": str(paths.CLEAN_MODEL), "model": params.model.config,
              "attack_name": attack_name, "edit": params.attacks[attack_name].options}
    with stage_run("pretrain", params.tracking.experiment, logged, {"attack": attack_name, "defense": "none"}) as log:
        found = handcrafted.craft(model, attack, images, labels, text, names.index(params.attacks[attack_name].target))
        report = Scorer(params, "val").report(zero_shot(params, model), attack_name)
        report = {k: v for k, v in report.items() if k in ("clean_accuracy", "attack_success_rate")}
        edit = {"separation": found.separation, "beyond_clean": found.beyond_clean, "alpha": found.alpha}
        with artifacts.atomic_dir(paths.backdoored(attack_name)) as out:
            models.save(model, params.model.config, out)
            # The edit's two directions, for whoever studies where the backdoor lives (studies/oracle.py).
            save_file({"v": found.v.contiguous(), "u": found.u.contiguous()}, str(out / EDIT_FILE))
            artifacts.write_json(out / "pretrain.json", {**report, "edit": edit, "mlflow_run_id": log.id})
        for key, value in {**report, **edit}.items():
            log.metric(f"val_{key}" if key in report else f"edit_{key}", value)
    return (f"wrote {paths.backdoored(attack_name)} by a rank-one edit: the trigger moves images "
            f"{found.separation:.1f} clean standard deviations along the edited direction; "
            + ", ".join(f"val {k} {v:.3f}" for k, v in report.items()))


def needs(params: Params, attack_name: str | None):
    """Upstream outputs (with the command that makes each) and the output, for artifacts.preflight."""
    inputs = [(paths.DOWNSTREAM / "val.parquet", "rvpt stage download")]
    if attack_name is None:
        if params.model.pretrained is None:
            inputs.append((paths.CORPUS, "rvpt stage download"))
        return inputs, paths.CLEAN_MODEL
    poison = f"rvpt stage poison --attack {attack_name}"
    inputs.append((paths.poisoned(attack_name) / "trigger.safetensors", poison))
    if edits_weights(params, attack_name):  # the clean model and its corpus; nothing poisoned
        return inputs + [(paths.CLEAN_MODEL, "rvpt stage pretrain --clean"), (paths.CORPUS, "rvpt stage download")], \
            paths.backdoored(attack_name)
    inputs.append((paths.poisoned(attack_name) / "corpus", poison))
    if params.pretrain.init == "clean":
        inputs.append((paths.CLEAN_MODEL, "rvpt stage pretrain --clean"))
    return inputs, paths.backdoored(attack_name)


def run(params: Params, attack_name: str | None) -> str:
    clean = attack_name is None
    if clean and params.model.pretrained is not None:
        return take_pretrained(params) if compute.is_main() else "pretrained weights taken by rank 0"
    if not clean and edits_weights(params, attack_name):
        return edit_weights(params, attack_name) if compute.is_main() else "the weight edit made by rank 0"
    schedule = params.pretrain.clean if clean or params.pretrain.init == "scratch" else params.pretrain.poisoned
    source = paths.CORPUS if clean else paths.poisoned(attack_name) / "corpus"
    destination = paths.CLEAN_MODEL if clean else paths.backdoored(attack_name)
    made_by = "rvpt stage download" if clean else f"rvpt stage poison --attack {attack_name}"

    table = artifacts.read_table(source, made_by)
    if clean or params.pretrain.init == "scratch":
        model = models.from_config(params.model.config, "params.yaml: model.config", seed=params.seed)
        start = "scratch"
    else:
        artifacts.require(paths.CLEAN_MODEL, "rvpt stage pretrain --clean")
        model, _ = models.load(paths.CLEAN_MODEL)
        start = str(paths.CLEAN_MODEL)
    images, table = corpus_images(params, table, source)
    tokens = models.tokenizer(params.model.config)(table.column("caption").to_pylist())

    logged = {"seed": params.seed, "start": start, "schedule": schedule.model_dump(),
              "model": params.model.config, "attack_name": attack_name or "none"}
    tags = {"attack": attack_name or "none", "defense": "none"}
    inputs = [source] if start == "scratch" else [source, paths.CLEAN_MODEL / models.WEIGHTS_NAME]
    checkpointing = Checkpointing(paths.CHECKPOINTS / f"pretrain-{attack_name or 'clean'}.pt",
                                  params.pretrain.checkpoint_every,
                                  fingerprint([params.seed, params.threads, params.model.config, schedule.model_dump(),
                                               params.compute.model_dump()], inputs))
    with stage_run("pretrain", params.tracking.experiment, logged, tags) as log:
        log.inputs({"corpus" if clean else f"corpus poisoned by {attack_name}": source}, "training")
        config = ClipTrainConfig(seed=params.seed, **schedule.model_dump(),
                                 **params.compute.model_dump(exclude={"processes"}))
        losses, resumed = train_clip(model, images, tokens, config, desc=f"pretrain {attack_name or 'clean'}",
                                     checkpointing=checkpointing)
        model.cpu()
        if not compute.is_main():
            return f"rank {compute.rank()} done"
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
