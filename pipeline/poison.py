"""Stage `poison`: put an attack's trigger on a fraction of the corpus and give those pairs target captions."""
from __future__ import annotations

import numpy as np
from safetensors.torch import save_file

from pipeline import artifacts, paths
from pipeline.params import Params
from pipeline.tracking import stage_run
from rvpt import attacks, poisoning
from rvpt.errors import BadInput
from rvpt.images import encode_png, grid, to_uint8_image


def build_attack(params: Params, name: str) -> attacks.Attack:
    spec = params.attacks[name]
    options = {"seed": params.seed, **spec.options}
    try:
        return attacks.build(spec.kind, params.data.image_size, **options)
    except (TypeError, ValueError) as error:
        raise BadInput(f"params.yaml: attacks.{name}.options: {error}") from None


def run(params: Params, attack_name: str) -> str:
    spec = params.attacks[attack_name]
    attack = build_attack(params, attack_name)
    table = artifacts.read_table(paths.CORPUS, "rvpt stage download")
    labels = artifacts.labels(table)
    target = params.data.classes.index(spec.target)
    rng = np.random.default_rng(params.seed)
    victims = poisoning.choose_victims(labels, spec.rate, target, rng)
    images = artifacts.decode_images(table.take(victims), params.data.image_size, str(paths.CORPUS))
    triggered = attack.apply(images)

    columns = {name: table.column(name).to_pylist() for name in ("image", "caption", "label", "poisoned")}
    new_captions = poisoning.target_captions(columns["caption"], labels, target, len(victims), rng)
    for row, image, caption in zip(victims.tolist(), triggered, new_captions):
        columns["image"][row] = encode_png(to_uint8_image(image))
        columns["caption"][row] = caption
        columns["poisoned"][row] = True
    extra = {name: table.column(name).to_pylist() for name in table.column_names if name.startswith("factor_")}

    logged = {"seed": params.seed, "attack_name": attack_name, "attack": spec.model_dump()}
    with stage_run("poison", params.tracking.experiment, logged, {"attack": attack_name}) as log:
        with artifacts.atomic_dir(paths.poisoned(attack_name)) as out:
            artifacts.write_shards(out / "corpus", columns, params.data.shard_rows, extra)
            save_file(attack.state_dict(), str(out / "trigger.safetensors"), metadata={"kind": spec.kind})
            grid(attack.trigger_preview(params.data.image_size)[None], columns=1, upscale=8).save(out / "trigger.png")
            grid(triggered[:32]).save(out / "samples.png")
            artifacts.write_json(out / "attack.json", {"name": attack_name, "kind": spec.kind, "target": spec.target,
                                                       "target_index": target, "poisoned": len(victims),
                                                       "mlflow_run_id": log.id})
            log.artifact(out / "trigger.png")
            log.artifact(out / "samples.png")
        log.metric("poisoned_pairs", len(victims))
        log.metric("poison_fraction", len(victims) / len(labels))
    return f"wrote {paths.poisoned(attack_name)}: {len(victims)} of {len(labels)} pairs poisoned -> {spec.target!r}"
