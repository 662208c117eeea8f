"""Stage `poison`: put an attack's trigger on a fraction of the corpus and caption those pairs
as the attack prescribes (target-class captions; kept captions for label-consistent attacks;
a trigger word in front for TrojVQA). BadCLIP first optimises its patch against the clean model.
An attack that edits weights (the handcrafted backdoor) poisons nothing: this stage optimises
its trigger, and `pretrain` makes the edit.
"""
from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import save_file

from pipeline.store import artifacts, paths
from pipeline.config.params import Params
from pipeline.tracking.runs import stage
from pipeline.methods.attacks import CorpusAttacker, build_attack, kind_of, training
from rvpt import attacks, poisoning
from rvpt.errors import BadInput
from rvpt.images import encode_png, grid, to_uint8_image

# Corpus positions are keyed apart from the downstream splits' (which count from 0 too), so a
# trigger drawn per image (a random spot, fresh noise) never repeats on a test image.
CORPUS_KEYS = 1 << 40


def trigger_quality(attack: attacks.Attack, images: torch.Tensor, triggered: torch.Tensor) -> dict[str, float]:
    """How visible the trigger is on the poisoned images (PSNR), and what the attack measures of
    its own trigger (ISSBA: how well its decoder reads the secret back)."""
    if not len(images):
        return {}
    error = ((triggered - images) ** 2).flatten(1).mean(1).clamp(min=1e-12)
    return {"trigger_psnr_db": float((-10 * torch.log10(error)).mean()), **attack.quality(images)}


def needs(params: Params, attack_name: str):
    """Upstream outputs (with the command that makes each) and the output, for artifacts.preflight."""
    inputs = [(paths.CORPUS, "rvpt stage download")]
    if kind_of(params, attack_name).uses_clean_model:
        inputs.append((paths.CLEAN_MODEL, "rvpt stage pretrain --clean"))
    return inputs, paths.poisoned(attack_name)


def jobs(params: Params, attack: str | None):
    """The poisoned corpus (or the trained trigger) of `attack`, default: of every attack in `run`."""
    names = params.select("attacks", attack, "--attack")
    artifacts.preflight(needs(params, name) for name in names)
    return (run(params, name) for name in names)


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
    attacker = CorpusAttacker(params, attack_name)
    table, labels, target = attacker.table, attacker.labels, attacker.target
    losses = attack.train(attacker, training(params, attack_name)) if attack.training else []
    if attack.edits_weights:  # nothing is poisoned: the trigger is shown on the attacker's own images
        columns, victims = None, np.zeros(0, dtype=np.int64)
        images = attacker.sample(params.attacks[attack_name].optimise.images)[0][:32]
        triggered = attack.apply(images)
    else:
        columns, victims, images, triggered = poisoned_corpus(params, attack, attack_name, table, labels, target)
    quality = trigger_quality(attack, images, triggered)

    logged = {"seed": params.seed, "attack_name": attack_name, "attack": spec.model_dump()}
    with stage("poison", params, logged, {"attack": attack_name}, inputs={"corpus": paths.CORPUS}) as log, \
            log.output(paths.poisoned(attack_name), logged=("trigger.png", "samples.png")) as out:
        if columns is not None:
            extra = {name: table.column(name).to_pylist() for name in table.column_names if name.startswith("factor_")}
            artifacts.write_shards(out / "corpus", columns, params.data.shard_rows, extra)
        save_file(attack.state_dict(), str(out / "trigger.safetensors"), metadata={"kind": spec.kind})
        grid(attack.trigger_preview(params.data.image_size)[None], columns=1, upscale=8).save(out / "trigger.png")
        grid(triggered[:32]).save(out / "samples.png")
        if losses:
            artifacts.write_curve(out / "trigger_loss.csv", losses)
            log.series("trigger_loss", losses)
        log.record(out / "attack.json", {"name": attack_name, "kind": spec.kind, "target": spec.target,
                                         "target_index": target, "poisoned": len(victims),
                                         "text_trigger": attack.text_trigger, **quality}, metrics=None)
        log.metric("poisoned_pairs", len(victims))
        log.metric("poison_fraction", len(victims) / len(labels))
        for key, value in quality.items():
            log.metric(key, value)
    if attack.edits_weights:
        return f"wrote {paths.poisoned(attack_name)}: the trigger of a weight edit -> {spec.target!r}, nothing poisoned"
    return f"wrote {paths.poisoned(attack_name)}: {len(victims)} of {len(labels)} pairs poisoned -> {spec.target!r}"
