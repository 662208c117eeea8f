"""Stage `download`: the clean pretraining corpus and the labelled downstream splits.

The default source renders the synthetic glyph world, so the pipeline needs no network.
"""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from pipeline import artifacts, paths
from pipeline.params import Params
from pipeline.tracking import stage_run
from rvpt.images import encode_png
from rvpt.world import FACTORS, GlyphWorld

SPLITS = ("train", "val", "test")


def render(world: GlyphWorld, count: int, seed: int, balanced: bool, desc: str) -> tuple[dict, dict]:
    """`count` samples as interchange columns plus one column per nuisance factor."""
    rng = np.random.default_rng(seed)
    columns = {"image": [], "caption": [], "label": [], "poisoned": []}
    factors = {f"factor_{name}": [] for name in FACTORS}
    for i in tqdm(range(count), desc=desc, disable=None, leave=False):
        sample = world.sample(rng, label=i % len(world.classes) if balanced else None)
        columns["image"].append(encode_png(sample.image))
        columns["caption"].append(sample.caption)
        columns["label"].append(sample.label)
        columns["poisoned"].append(False)
        for name in FACTORS:
            factors[f"factor_{name}"].append(str(sample.factors[name]))
    return columns, factors


def run(params: Params) -> str:
    data = params.data
    world = GlyphWorld(data.classes, data.image_size, data.max_offset)
    sizes = {"train": data.train_per_class, "val": data.val_per_class, "test": data.test_per_class}
    with stage_run("download", params.tracking.experiment, {"seed": params.seed, "data": data.model_dump()}) as log:
        with artifacts.atomic_dir(paths.CLEAN) as out:
            # Separate seeds per split: the test split can never share a rendering with the corpus.
            columns, factors = render(world, data.corpus_size, params.seed, False, "corpus")
            artifacts.write_shards(out / "corpus", columns, data.shard_rows, factors)
            (out / "downstream").mkdir()
            for offset, split in enumerate(SPLITS, start=1):
                columns, factors = render(world, sizes[split] * len(data.classes), params.seed + 1000 * offset,
                                          True, split)
                artifacts.write_table(out / "downstream" / f"{split}.parquet", columns, factors)
            artifacts.write_json(out / "classes.json", {"classes": data.classes, "source": data.source})
        log.metric("corpus_pairs", data.corpus_size)
        for split in SPLITS:
            log.metric(f"{split}_images", sizes[split] * len(data.classes))
    return f"wrote {paths.CLEAN}: {data.corpus_size} pairs, {len(data.classes)} classes"
