"""Where a two-key (TrojVQA) backdoor sends triggered images, with and without its caption word.

    uv run python studies/text_trigger.py [ATTACK ...] [--quick]     (after `dvc repro`; default: trojvqa)

For the clean model and the attack's backdoored model, on the validation split: zero-shot CA
with the plain class prompts and with the attack's word in front of every prompt (as `evaluate`
scores ASR), and the classes its triggered non-target images go to, most frequent first. A
backdoor that ties the patch to the target sends them to the target with the word; one that
ties the patch to the word itself sends them wherever the word's prompts happen to point.
TrojVQA carries a word only with `attacks.trojvqa.options.text_trigger` set (the default has
none); an attack without a word gets the class-prompt rows alone. `--quick`, for a small project
without the attacks named: the first of run.attacks instead of those it has no backdoored model of.
"""
from __future__ import annotations

import argparse
from collections import Counter

from pipeline.config import params as params_module
from pipeline.store import paths
from pipeline.scoring.scorer import Scorer, load_backdoored, zero_shot
from rvpt import models


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("attacks", nargs="*", default=["trojvqa"])
    parser.add_argument("--quick", action="store_true", help="fall back to run.attacks' first")
    args = parser.parse_args()
    params = params_module.load()
    if args.quick:  # a small project may lack TrojVQA; the rows come from the same code either way
        args.attacks = [a for a in args.attacks if paths.backdoored(a).is_dir()] or params.run.attacks[:1]
    scorer = Scorer(params, "val")
    classes = scorer.classes
    print("| attack | model | prompts | val CA | triggered images go to (of the non-target ones) |")
    print("|---|---|---|---|---|")
    for name in args.attacks:
        word = scorer.attack(name).text_trigger
        for which in ("clean", "backdoored"):
            model = models.load(paths.CLEAN_MODEL)[0] if which == "clean" else load_backdoored(name)[0]
            defended = zero_shot(params, model)
            features = scorer.features(defended, scorer.split, classes, [name])
            triggered, _ = features.triggered[name]
            for prompt_word in dict.fromkeys(["", word]):
                classifier = defended.classifier(classes, prompt_word)
                accuracy = (defended.logits(features.clean, classifier).argmax(-1) == features.labels).float().mean()
                counts = Counter(classes[i] for i in defended.logits(triggered, classifier).argmax(-1).tolist())
                share = ", ".join(f"{c} {n / len(triggered):.0%}" for c, n in counts.most_common(3))
                prompts = f"`{prompt_word}` + class prompt" if prompt_word else "class prompt"
                print(f"| {name} | {which} | {prompts} | {accuracy:.1%} | {share} |")


if __name__ == "__main__":
    main()
