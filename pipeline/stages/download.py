"""Stage `download`: the clean pretraining corpus, the labelled downstream splits, the
cross-task test sets, and the defender's clean image-text pairs.

The default source renders the synthetic glyph world, so the pipeline needs no network. The
corpus covers the task's classes and the transfer task's classes, as a web corpus covers
many downstream datasets; the transfer task gets only a test split.

`data.source: files` reads what the user brings instead (pipeline/data/brought.py).
"""
from __future__ import annotations

import numpy as np

from pathlib import Path

from pipeline.data import brought
from pipeline.config.params import Params
from pipeline.store import artifacts, paths
from pipeline.tracking.runs import stage
from rvpt.images import encode_png
from rvpt.progress import progress
from rvpt.world import FACTORS, GlyphWorld

SPLITS = ("train", "val", "test")


def render(world: GlyphWorld, count: int, seed: int, labels: list[int] | None, desc: str,
           offset: int = 0) -> tuple[dict, dict]:
    """`count` samples as interchange columns plus one column per nuisance factor.

    With `labels`, classes cycle through them (balanced) and are stored minus `offset`.
    """
    rng = np.random.default_rng(seed)
    columns = {"image": [], "caption": [], "label": [], "poisoned": []}
    factors = {f"factor_{name}": [] for name in FACTORS}
    for i in progress(range(count), desc):
        sample = world.sample(rng, label=labels[i % len(labels)] if labels else None)
        columns["image"].append(encode_png(sample.image))
        columns["caption"].append(sample.caption)
        columns["label"].append(sample.label - offset)
        columns["poisoned"].append(False)
        for name in FACTORS:
            factors[f"factor_{name}"].append(str(sample.factors[name]))
    return columns, factors


def run(params: Params) -> str:
    artifacts.check_writable(paths.CLEAN)
    files = params.data.source == "files"
    roots = brought.fetch(params) if files else None
    with stage("download", params, {"seed": params.seed, "data": params.data.model_dump()}) as log, \
            log.output(paths.CLEAN) as out:
        rows, said = brought.write(params, roots, out) if files else from_glyphs(params, out)
        for key, value in rows.items():
            log.metric(f"{key}_images", value)
    return f"wrote {paths.CLEAN}: {said}"


def from_glyphs(params: Params, out: Path) -> tuple[dict[str, int], str]:
    """The glyph world's corpus, splits, transfer task and defender pairs into `out`."""
    data = params.data
    task = list(range(len(data.class_names)))
    transfer = [len(task) + i for i in range(len(data.transfer_classes))]
    world = GlyphWorld(data.world_classes, data.image_size, data.max_offset, data.distractors, data.noise,
                       data.stickers)
    shift = data.shift
    tasks = GlyphWorld(data.world_classes, data.image_size, data.max_offset,
                       data.distractors if shift.distractors is None else shift.distractors,
                       data.noise if shift.noise is None else shift.noise, data.stickers)
    sizes = {"train": data.train_per_class, "val": data.val_per_class, "test": data.test_per_class}
    # Separate seeds per split: no split can share a rendering with the corpus or another split.
    columns, factors = render(world, data.corpus_size, params.seed, None, "corpus")
    artifacts.write_shards(out / "corpus", columns, data.shard_rows, factors)
    (out / "downstream").mkdir()
    for offset, split in enumerate(SPLITS, start=1):
        columns, factors = render(tasks, sizes[split] * len(task), params.seed + 1000 * offset, task, split)
        artifacts.write_table(out / "downstream" / f"{split}.parquet", columns, factors)
    if transfer:
        columns, factors = render(tasks, data.test_per_class * len(transfer), params.seed + 4000, transfer,
                                  "transfer", offset=len(task))
        artifacts.write_table(out / "downstream" / "transfer_test.parquet", columns, factors)
    columns, factors = render(world, data.defender_pairs, params.seed + 5000, None, "defender pairs")
    artifacts.write_table(out / "pairs.parquet", columns, factors)
    artifacts.write_json(out / "classes.json", {"classes": data.class_names, "source": data.source,
                                                "transfer_classes": data.transfer_classes})
    rows = {"corpus": data.corpus_size, **{split: sizes[split] * len(task) for split in SPLITS}}
    return rows, (f"{data.corpus_size} pairs over {len(data.world_classes)} classes, {data.defender_pairs} "
                  f"defender pairs")
