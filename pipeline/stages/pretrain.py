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

from pipeline.data import sources
from pipeline.store import artifacts, paths
from pipeline.tracking.registry import BACKBONE
from pipeline.scoring.scorer import Scorer, zero_shot
from pipeline.config.training import schedule_of
from pipeline.config.params import Params
from pipeline.tracking.runs import stage
from pipeline.methods.attacks import CorpusAttacker, kind_of, load_attack, training
from rvpt import compute, models, pretrained
from rvpt.images import LazyImages
from rvpt.resume import Checkpointing, fingerprint
from rvpt.train import ClipTrainConfig, train_clip


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
    with stage("pretrain", params, logged, {"attack": "none", "defense": "none"}) as log, \
            log.output(paths.CLEAN_MODEL) as out:
        report = Scorer(params, "val").report(zero_shot(params, model), None)
        models.save(model, params.model.config, out)
        log.record(out / "pretrain.json", {**report, "pretrained": params.model.pretrained,
                                           "weights_sha256": sources.sha256_of(weights)}, metrics="val_")
    return f"wrote {paths.CLEAN_MODEL} from {params.model.name}/{params.model.pretrained}: " \
           f"val clean_accuracy {report['clean_accuracy']:.3f}"


EDIT_FILE = "edit.safetensors"


def validation_scores(params: Params, model, attack_name: str | None) -> dict[str, float]:
    """The model's zero-shot CA, and ASR when it carries an attack, on the validation split."""
    report = Scorer(params, "val").report(zero_shot(params, model), attack_name)
    return {k: v for k, v in report.items() if k in ("clean_accuracy", "attack_success_rate")}


def edit_weights(params: Params, attack_name: str) -> str:
    """An attack that edits weights (the handcrafted backdoor): the clean model, edited with the
    trigger the poison stage trained, on what the attacker reaches."""
    model, _ = models.load(artifacts.require(paths.CLEAN_MODEL, "rvpt stage pretrain --clean"))
    attack = load_attack(params, attack_name)
    logged = {"seed": params.seed, "start": str(paths.CLEAN_MODEL), "model": params.model.config,
              "attack_name": attack_name, "edit": params.attacks[attack_name].options}
    with stage("pretrain", params, logged, {"attack": attack_name, "defense": "none"}) as log:
        with log.output(paths.backdoored(attack_name)) as out:
            found = attack.edit(model, CorpusAttacker(params, attack_name), training(params, attack_name))
            report = validation_scores(params, model, attack_name)
            edit = found.report()
            models.save(model, params.model.config, out)
            save_file(found.tensors(), str(out / EDIT_FILE))  # what the edit changed, for whoever studies it
            log.record(out / "pretrain.json", {**report, "edit": edit}, metrics="val_")
        for key, value in edit.items():
            log.metric(f"edit_{key}", value)
        log.artifact(paths.backdoored(attack_name), BACKBONE)  # once: every defended cell refers to it
    return (f"wrote {paths.backdoored(attack_name)} by editing the clean model ("
            + ", ".join(f"{k} {v:.3g}" for k, v in edit.items()) + "): "
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
    if kind_of(params, attack_name).edits_weights:  # the clean model and its corpus; nothing poisoned
        return inputs + [(paths.CLEAN_MODEL, "rvpt stage pretrain --clean"), (paths.CORPUS, "rvpt stage download")], \
            paths.backdoored(attack_name)
    inputs.append((paths.poisoned(attack_name) / "corpus", poison))
    if params.pretrain.init == "clean":
        inputs.append((paths.CLEAN_MODEL, "rvpt stage pretrain --clean"))
    return inputs, paths.backdoored(attack_name)


def jobs(params: Params, attack: str | None, clean: bool):
    """The clean model, or the backdoored model of `attack` (default: of every attack in `run`)."""
    names = [None] if clean else params.select("attacks", attack, "--attack")
    artifacts.preflight(needs(params, name) for name in names)
    return (run(params, name) for name in names)


def run(params: Params, attack_name: str | None) -> str:
    clean = attack_name is None
    if clean and params.model.pretrained is not None:
        return take_pretrained(params) if compute.is_main() else "pretrained weights taken by rank 0"
    if not clean and kind_of(params, attack_name).edits_weights:
        return edit_weights(params, attack_name) if compute.is_main() else "the weight edit made by rank 0"
    schedule = schedule_of(params, "clean" if clean or params.pretrain.init == "scratch" else "poisoned")
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
    corpus = {"corpus" if clean else f"corpus poisoned by {attack_name}": source}
    with stage("pretrain", params, logged, tags, inputs=corpus, context="training") as log:
        config = ClipTrainConfig(seed=params.seed, **schedule.model_dump(),
                                 **params.compute.model_dump(exclude={"processes"}))
        losses, resumed = train_clip(model, images, tokens, config, desc=f"pretrain {attack_name or 'clean'}",
                                     checkpointing=checkpointing)
        model.cpu()
        if not compute.is_main():
            return f"rank {compute.rank()} done"
        report = validation_scores(params, model, attack_name)
        with log.output(destination, logged=("loss.csv",)) as out:
            models.save(model, params.model.config, out)
            artifacts.write_curve(out / "loss.csv", losses)
            final_loss = sum(losses[-50:]) / len(losses[-50:])
            log.record(out / "pretrain.json", {**report, "final_loss": final_loss}, metrics=None)
        for key, value in report.items():
            log.metric(f"val_{key}", value)
        log.series("loss", losses, every=max(1, len(losses) // 500))
        log.param("resumed_from_step", resumed)
        if attack_name is not None:  # once: every defended cell of the attack refers to it
            log.artifact(destination, BACKBONE)
    checkpointing.clear()
    scores = ", ".join(f"val {k} {v:.3f}" for k, v in report.items())
    resumed_note = f" (resumed from step {resumed})" if resumed else ""
    return f"wrote {destination}{resumed_note}: {scores}"
