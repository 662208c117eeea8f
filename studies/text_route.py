"""Could the text tower alone carry a backdoor? The best any text side can do with the clean image tower.

    uv run python studies/text_route.py [ATTACK ...] [--images 2000] [--steps 500] [--quick]
                                         (after `dvc repro`; default: run.attacks)

A text tower only decides where the class embeddings lie. So the most a poisoning of the text tower
alone can reach is the best set of class embeddings for the clean image tower's features: one unit
vector per class, scored at the clean model's logit scale, fitted to send clean images to their class
and triggered images to the target. Fitted on the first half of `--images` test images, scored on the
second half. Beside it, the same fit on clean images alone (what a head fitted on clean data reads).
High ASR at kept CA means the clean encoder already tells triggered images apart, so a text route
exists; low ASR means no text side could implant this trigger, whatever its training. `--quick`:
40 images and 20 steps, the same fits in seconds.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from trigger_path import first_images

from pipeline.config import params as params_module
from pipeline.store import paths
from pipeline.methods.attacks import load_attack
from rvpt import metrics, models
from rvpt.images import normalize
from rvpt.zeroshot import class_embeddings


def fit(features, labels, start, scale, steps: int) -> torch.Tensor:
    """Unit class embeddings minimising cross-entropy at a fixed logit scale, from `start`."""
    weights = start.clone().requires_grad_()
    optimiser = torch.optim.Adam([weights], lr=0.01)
    for _ in range(steps):
        optimiser.zero_grad()
        F.cross_entropy(scale * features @ F.normalize(weights, dim=-1).T, labels).backward()
        optimiser.step()
    return F.normalize(weights.detach(), dim=-1)


def scores(weights, clean, triggered, labels, target) -> tuple[float, float]:
    return (metrics.accuracy((clean @ weights.T).argmax(-1), labels),
            metrics.attack_success_rate((triggered @ weights.T).argmax(-1), labels, target))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("attacks", nargs="*")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="40 images, 20 steps")
    args = parser.parse_args()
    if args.quick:
        args.images, args.steps = 40, 20
    params = params_module.load("params.yaml", {})
    torch.set_num_threads(params.threads)
    images, labels, index = first_images(params, args.images)
    half = len(images) // 2
    model, _ = models.load(paths.CLEAN_MODEL)
    scale = model.logit_scale.exp().item()
    with torch.no_grad():
        text = class_embeddings(model, models.tokenizer(params.model.config), params.data.class_names,
                                params.model.templates)
        clean = F.normalize(model.encode_image(normalize(images)), dim=-1)
    print(f"clean model, {half} images to fit and {len(images) - half} to score, logit scale {scale:.1f}\n")
    print("| attack | class embeddings | CA | ASR |\n|---|---|---|---|")
    for name in args.attacks or params.run.attacks:
        attack = load_attack(params, name)
        target = params.data.class_names.index(params.attacks[name].target)
        with torch.no_grad():
            triggered = F.normalize(model.encode_image(normalize(attack.apply(images, index))), dim=-1)
        fit_part, held = slice(0, half), slice(half, None)
        moved = labels[fit_part] != target
        poisoned_x = torch.cat([clean[fit_part], triggered[fit_part][moved]])
        poisoned_y = torch.cat([labels[fit_part], torch.full((int(moved.sum()),), target)])
        heads = {"the clean text tower's": text,
                 "fitted to clean images": fit(clean[fit_part], labels[fit_part], text, scale, args.steps),
                 "fitted to clean + triggered -> target": fit(poisoned_x, poisoned_y, text, scale, args.steps)}
        for key, weights in heads.items():
            ca, asr = scores(weights, clean[held], triggered[held], labels[held], target)
            print(f"| {name} | {key} | {ca:.3f} | {asr:.3f} |")


if __name__ == "__main__":
    main()
