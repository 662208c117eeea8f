"""Stage `poison`: put an attack's trigger on a fraction of the corpus and caption those pairs
as the attack prescribes (target-class captions; kept captions for label-consistent attacks;
a trigger word in front for TrojVQA). BadCLIP first optimises its patch against the clean model.
An attack that edits weights (the handcrafted backdoor) poisons nothing: this stage optimises
its trigger, and `pretrain` makes the edit.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pipeline import artifacts, paths
from pipeline.params import Params
from pipeline.tracking import stage_run
from pipeline.triggers import attacker_images, build_attack
from rvpt import attacks, models, poisoning
from rvpt.attacks import handcrafted
from rvpt.errors import BadInput
from rvpt.images import encode_png, grid, normalize, to_uint8_image

# Corpus positions are keyed apart from the downstream splits' (which count from 0 too), so a
# trigger drawn per image (a random spot, fresh noise) never repeats on a test image.
CORPUS_KEYS = 1 << 40


def optimise_badclip(params: Params, attack: attacks.BadCLIP, name: str, table, labels: np.ndarray,
                     target: int) -> list[float]:
    """The attacker's patch optimisation on corpus images, against the clean (never poisoned) model."""
    spec = params.attacks[name].optimise
    model, _ = models.load(artifacts.require(paths.CLEAN_MODEL, "rvpt stage pretrain --clean"))
    rng = np.random.default_rng(params.seed)
    others = rng.permutation(np.flatnonzero(labels != target))[:spec.images]
    targets = rng.permutation(np.flatnonzero(labels == target))[:spec.images]
    def decode(rows):
        return artifacts.decode_images(table.take(np.sort(rows)), params.data, str(paths.CORPUS))[0]

    captions = [table.column("caption")[int(i)].as_py() for i in targets]
    with torch.no_grad():
        text = F.normalize(model.encode_text(models.tokenizer(params.model.config)(captions)), dim=-1).mean(0)
    config = attacks.PatchOptimisation(steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, seed=params.seed)
    return attacks.optimise_patch(attack, lambda x: model.encode_image(normalize(x)), decode(others),
                                  decode(targets), text, config)


def train_issba(params: Params, attack: attacks.ISSBA, name: str, table) -> list[float]:
    """The attacker's steganography encoder-decoder, trained on random corpus images of any class."""
    spec = params.attacks[name].optimise
    rows = np.sort(np.random.default_rng(params.seed).permutation(table.num_rows)[:spec.images])
    images = artifacts.decode_images(table.take(rows), params.data, str(paths.CORPUS))[0]
    config = attacks.StegaTraining(steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, seed=params.seed)
    return attacks.train_stega(attack, images, config)


def optimise_handcrafted(params: Params, attack: attacks.Handcrafted, name: str, table) -> list[float]:
    """The handcrafted backdoor's patch, optimised on the attacker's images to move the clean
    model's pooled feature out of the subspace the task reads (rvpt/attacks/handcrafted.py)."""
    spec = params.attacks[name].optimise
    model, _ = models.load(artifacts.require(paths.CLEAN_MODEL, "rvpt stage pretrain --clean"))
    images, labels = attacker_images(params, name, table)
    found = handcrafted.survey(model.visual, images, labels, attack.components)
    config = handcrafted.TriggerOptimisation(steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, seed=params.seed)
    return handcrafted.optimise_trigger(attack, lambda x: handcrafted.pooled_features(model.visual, normalize(x)),
                                        images, found.basis, found.metric, config)


def train_trigger(params: Params, attack: attacks.Attack, name: str, table, labels, target) -> list[float]:
    """Whatever the attacker trains before poisoning; the loss per step (none for a fixed trigger)."""
    if isinstance(attack, attacks.BadCLIP):
        return optimise_badclip(params, attack, name, table, labels, target)
    if isinstance(attack, attacks.ISSBA):
        return train_issba(params, attack, name, table)
    if isinstance(attack, attacks.Handcrafted):
        return optimise_handcrafted(params, attack, name, table)
    return []


def trigger_quality(attack: attacks.Attack, images: torch.Tensor, triggered: torch.Tensor) -> dict[str, float]:
    """How visible the trigger is on the poisoned images (PSNR), and for ISSBA how well its
    decoder reads the secret back."""
    if not len(images):
        return {}
    error = ((triggered - images) ** 2).flatten(1).mean(1).clamp(min=1e-12)
    out = {"trigger_psnr_db": float((-10 * torch.log10(error)).mean())}
    if isinstance(attack, attacks.ISSBA):
        out["secret_bit_accuracy"] = attacks.bit_accuracy(attack, images)
    return out


def needs(params: Params, attack_name: str):
    """Upstream outputs (with the command that makes each) and the output, for artifacts.preflight."""
    inputs = [(paths.CORPUS, "rvpt stage download")]
    if params.attacks[attack_name].kind in ("badclip", "handcrafted"):
        inputs.append((paths.CLEAN_MODEL, "rvpt stage pretrain --clean"))
    return inputs, paths.poisoned(attack_name)


def poisoned_corpus(params: Params, attack: attacks.Attack, attack_name: str, table, labels, target):
    """The corpus's columns with the attack's victims triggered and recaptioned, the victims' rows,
    and their clean and triggered images."""
    rng = np.random.default_rng(params.seed)
    columns = {name: table.column(name).to_pylist() for name in ("image", "caption", "label", "poisoned")}
    try:
        victims, new_captions = poisoning.poison_plan(attack, labels, columns["caption"], params.attacks[attack_name].rate,
                                                      target, rng)
    except ValueError as error:
        raise BadInput(f"attacks.{attack_name}: {error}") from None
    images, kept = artifacts.decode_images(table.take(victims), params.data, str(paths.CORPUS))
    victims, new_captions = victims[kept], [new_captions[i] for i in kept]
    triggered = attack.apply(images, torch.from_numpy(victims.astype(np.int64)) + CORPUS_KEYS)
    for row, image, caption in zip(victims.tolist(), triggered, new_captions):
        columns["image"][row] = encode_png(to_uint8_image(image))
        columns["caption"][row] = caption
        columns["poisoned"][row] = True
    return columns, victims, images, triggered


def run(params: Params, attack_name: str) -> str:
    spec = params.attacks[attack_name]
    attack = build_attack(params, attack_name)
    table = artifacts.read_table(paths.CORPUS, "rvpt stage download")
    target = params.data.class_names.index(spec.target)
    labels = poisoning.label_unlabelled(artifacts.labels(table), table.column("caption").to_pylist(), spec.target,
                                        target)
    losses = train_trigger(params, attack, attack_name, table, labels, target)
    if attack.edits_weights:  # nothing is poisoned: the trigger is shown on the attacker's own images
        columns, victims = None, np.zeros(0, dtype=np.int64)
        images = attacker_images(params, attack_name, table)[0][:32]
        triggered = attack.apply(images)
    else:
        columns, victims, images, triggered = poisoned_corpus(params, attack, attack_name, table, labels, target)
    quality = trigger_quality(attack, images, triggered)

    logged = {"seed": params.seed, "attack_name": attack_name, "attack": spec.model_dump()}
    with stage_run("poison", params.tracking.experiment, logged, {"attack": attack_name}) as log:
        log.inputs({"corpus": paths.CORPUS}, "poisoning")
        with artifacts.atomic_dir(paths.poisoned(attack_name)) as out:
            if columns is not None:
                extra = {name: table.column(name).to_pylist() for name in table.column_names
                         if name.startswith("factor_")}
                artifacts.write_shards(out / "corpus", columns, params.data.shard_rows, extra)
            save_file(attack.state_dict(), str(out / "trigger.safetensors"), metadata={"kind": spec.kind})
            grid(attack.trigger_preview(params.data.image_size)[None], columns=1, upscale=8).save(out / "trigger.png")
            grid(triggered[:32]).save(out / "samples.png")
            if losses:
                artifacts.write_curve(out / "trigger_loss.csv", losses)
            artifacts.write_json(out / "attack.json", {"name": attack_name, "kind": spec.kind, "target": spec.target,
                                                       "target_index": target, "poisoned": len(victims),
                                                       "text_trigger": attack.text_trigger, **quality,
                                                       "mlflow_run_id": log.id})
            log.artifact(out / "trigger.png")
            log.artifact(out / "samples.png")
        log.metric("poisoned_pairs", len(victims))
        log.metric("poison_fraction", len(victims) / len(labels))
        for key, value in quality.items():
            log.metric(key, value)
        if losses:
            log.series("trigger_loss", losses)
    if attack.edits_weights:
        return f"wrote {paths.poisoned(attack_name)}: the trigger of a weight edit -> {spec.target!r}, nothing poisoned"
    return f"wrote {paths.poisoned(attack_name)}: {len(victims)} of {len(labels)} pairs poisoned -> {spec.target!r}"
