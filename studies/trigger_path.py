"""Where a trigger acts in the image tower, block by block, with and without RVPT's prompts.

    uv run python studies/trigger_path.py [ATTACK ...] [--images 1000] [--quick]
                                          (after `dvc repro`; default: run.attacks)

In a folder without RVPT cells (a world probe's), it prints the frozen encoder's rows only; without
VPT cells, the VPT column shows "-". `--quick`: the first 40 test images, for a small project.

On the first `--images` test images, for each block's CLS token it prints:
- FR cos: the cosine L_FR minimises, RVPT's CLS against the frozen encoder's on clean images, and
  the same cosine once each encoder's CLS tokens are centred on their clean mean (a large offset
  shared by every image, which raw cosines carry, compresses every raw cosine towards one);
- offset share: the share of ||CLS_rvpt - CLS_frozen||^2 that one offset shared by every image
  explains (1: the prompts move every image the same way; 0: each image its own way);
- target pull, for the frozen, the RVPT and the VPT encoder: over triggered images whose class is
  not the target, mean cos(CLS, target-class centroid) - mean cos(CLS, own-class centroid), every
  CLS token and centroid centred on that encoder's clean mean at that block first, so that the
  shared offset does not shrink the figure. Positive: the trigger has carried the image towards
  the target at that block.
Then which tower carries the backdoor: zero-shot CA and ASR with the image and the text tower
taken from the clean or the backdoored model, and the backdoored image tower's mean trigger
shift on the unit sphere (triggered minus clean embedding, over non-target images): its length,
the share of it inside the span of the clean class centroids (what a linear head trained on
clean images reads), and its cosine with the target's text direction (its class embedding
minus the mean class embedding).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from pipeline.config import params as params_module
from pipeline.store import paths
from pipeline.methods.attacks import load_attack
from pipeline.scoring.scorer import load_backdoored, open_split
from rvpt import metrics, models
from rvpt.defenses.base import ZeroShot
from rvpt.defenses.registry import KINDS
from rvpt.diagnostics import OffsetShare
from rvpt.images import normalize
from rvpt.poisoning import with_text_trigger
from rvpt.zeroshot import class_embeddings, unit


def first_images(params, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, labels, index = [], [], []
    for batch in open_split(params, "test").batches(params.evaluate.batch_size):
        images.append(unit(batch.pixels))
        labels.append(batch.labels)
        index.append(batch.index)
        if sum(map(len, labels)) >= count:
            break
    return torch.cat(images)[:count], torch.cat(labels)[:count], torch.cat(index)[:count]


def target_pull(clean: torch.Tensor, triggered: torch.Tensor, labels: torch.Tensor, target: int) -> torch.Tensor:
    """Per block: mean cos to the target centroid minus mean cos to the own-class centroid, every
    vector centred on the encoder's clean mean at that block. Tensors [N, blocks, width]."""
    mean = clean.mean(0, keepdim=True)
    clean, triggered = F.normalize(clean - mean, dim=-1), F.normalize(triggered - mean, dim=-1)
    centroids = F.normalize(torch.stack([clean[labels == c].mean(0) for c in range(int(labels.max()) + 1)]), dim=-1)
    keep = labels != target
    to_target = (triggered[keep] * centroids[target]).sum(-1)
    to_own = (triggered[keep] * centroids[labels[keep]]).sum(-1)
    return (to_target - to_own).mean(0)


@torch.no_grad()
def towers(clean_model, backdoored, tokenize, params, clean_in, triggered_in, labels, target, text_trigger) -> None:
    names, keep = params.data.class_names, labels != target
    templates = [with_text_trigger(t, text_trigger) for t in params.model.templates]  # TrojVQA's word, as scored
    texts = {key: class_embeddings(m, tokenize, names, templates)
             for key, m in (("clean", clean_model), ("backdoored", backdoored))}
    embedded = {key: tuple(F.normalize(m.encode_image(x), dim=-1) for x in (clean_in, triggered_in))
                for key, m in (("clean", clean_model), ("backdoored", backdoored))}
    print("\n| image tower | text tower | CA | ASR |\n|---|---|---|---|")
    for image_key, (clean, triggered) in embedded.items():
        for text_key, text in texts.items():
            ca = metrics.accuracy((clean @ text.T).argmax(-1), labels)
            asr = metrics.attack_success_rate((triggered @ text.T).argmax(-1), labels, target)
            print(f"| {image_key} | {text_key} | {ca:.3f} | {asr:.3f} |")
    clean, triggered = embedded["backdoored"]
    shift = (triggered - clean)[keep].mean(0)
    centroids = torch.stack([clean[labels == c].mean(0) for c in range(len(names))])
    basis, _ = torch.linalg.qr((centroids - centroids.mean(0)).T)
    target_direction = texts["backdoored"][target] - texts["backdoored"].mean(0)
    print(f"\nbackdoored image tower: mean trigger shift {shift.norm():.3f} long, "
          f"{(basis.T @ shift).norm() / shift.norm():.3f} of it in the class-centroid span, "
          f"cosine {F.cosine_similarity(shift, target_direction, 0):.3f} with the target's text direction")


def prompted_rows(clean: dict[str, torch.Tensor], pull: dict[str, torch.Tensor]) -> None:
    """Per block: FR cos raw and centred, offset share and the target pull of the frozen, RVPT and VPT encoders."""
    rvpt, frozen = clean["rvpt"], clean["frozen"]
    fr = F.cosine_similarity(rvpt, frozen, dim=-1).mean(0)
    centred = F.cosine_similarity(rvpt - rvpt.mean(0), frozen - frozen.mean(0), dim=-1).mean(0)
    shares = OffsetShare()
    shares.add(rvpt, frozen)
    print("| block | FR cos (RVPT vs frozen, clean) | centred | offset share | target pull frozen | RVPT | VPT |")
    print("|---|---|---|---|---|---|---|")
    for block, share in enumerate(shares.per_block()):
        moved = "-" if share is None else f"{share:.3f}"  # an unprompted block: no offset
        vpt = f"{pull['vpt'][block]:+.3f}" if "vpt" in pull else "-"  # a project without VPT cells
        print(f"| {block} | {fr[block]:.3f} | {centred[block]:.3f} | {moved} | {pull['frozen'][block]:+.3f} | "
              f"{pull['rvpt'][block]:+.3f} | {vpt} |")


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("attacks", nargs="*")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="the first 40 test images")
    args = parser.parse_args()
    if args.quick:
        args.images = 40
    params = params_module.load("params.yaml", {})
    torch.set_num_threads(params.threads)
    images, labels, index = first_images(params, args.images)
    tokenize = models.tokenizer(params.model.config)
    clean_model, _ = models.load(paths.CLEAN_MODEL)
    for name in args.attacks or params.run.attacks:
        model, _ = load_backdoored(name)
        attack = load_attack(params, name)
        target = params.data.class_names.index(params.attacks[name].target)
        encoders = {"frozen": ZeroShot(model, tokenize, params.model.templates)}
        for defense in ("rvpt", "vpt"):
            if paths.defended(name, defense).is_dir():  # a world probe's folder has none
                encoders[defense] = KINDS["prompt"].load(model, paths.defended(name, defense), tokenize,
                                                         params.model.templates)
        clean_in, triggered_in = normalize(images), normalize(attack.apply(images, index))
        clean = {key: e.block_cls(clean_in) for key, e in encoders.items()}
        pull = {key: target_pull(clean[key], e.block_cls(triggered_in), labels, target)
                for key, e in encoders.items()}
        print(f"\n{name} ({len(images)} test images; target {params.attacks[name].target})\n")
        if "rvpt" in encoders:
            prompted_rows(clean, pull)
        else:
            print("| block | target pull frozen |\n|---|---|")
            print("\n".join(f"| {block} | {value:+.3f} |" for block, value in enumerate(pull["frozen"].tolist())))
        towers(clean_model, model, tokenize, params, clean_in, triggered_in, labels, target, attack.text_trigger)


if __name__ == "__main__":
    main()
