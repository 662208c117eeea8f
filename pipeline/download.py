"""Stage `download`: the clean pretraining corpus, the labelled downstream splits, and the
defender's clean image-text pairs.

The default source renders the synthetic glyph world, so the pipeline needs no network. The
corpus covers the task's classes and the transfer task's classes, as a web corpus covers
many downstream datasets; the transfer task gets only a test split.
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


def render(world: GlyphWorld, count: int, seed: int, labels: list[int] | None, desc: str,
           offset: int = 0) -> tuple[dict, dict]:
    """`count` samples as interchange columns plus one column per nuisance factor.

    With `labels`, classes cycle through them (balanced) and are stored minus `offset`.
    """
    rng = np.random.default_rng(seed)
    columns = {"image": [], "caption": [], "label": [], "poisoned": []}
    factors = {f"factor_{name}": [] for name in FACTORS}
    for i in tqdm(range(count), desc=desc, disable=None, leave=False):
        sample = world.sample(rng, label=labels[i % len(labels)] if labels else None)
        columns["image"].append(encode_png(sample.image))
        columns["caption"].append(sample.caption)
        columns["label"].append(sample.label - offset)
        columns["poisoned"].append(False)
        for name in FACTORS:
            factors[f"factor_{name}"].append(str(sample.factors[name]))
    return columns, factors


def run(params: Params) -> str:
    data = params.data
    task, transfer = list(range(len(data.classes))), [len(data.classes) + i for i in range(len(data.transfer_classes))]
    world = GlyphWorld(data.classes + data.transfer_classes, data.image_size, data.max_offset)
    sizes = {"train": data.train_per_class, "val": data.val_per_class, "test": data.test_per_class}
    with stage_run("download", params.tracking.experiment, {"seed": params.seed, "data": data.model_dump()}) as log:
        with artifacts.atomic_dir(paths.CLEAN) as out:
            # Separate seeds per split: no split can share a rendering with the corpus or another split.
            columns, factors = render(world, data.corpus_size, params.seed, None, "corpus")
            artifacts.write_shards(out / "corpus", columns, data.shard_rows, factors)
            (out / "downstream").mkdir()
            for offset, split in enumerate(SPLITS, start=1):
                columns, factors = render(world, sizes[split] * len(task), params.seed + 1000 * offset, task, split)
                artifacts.write_table(out / "downstream" / f"{split}.parquet", columns, factors)
            if transfer:
                columns, factors = render(world, data.test_per_class * len(transfer), params.seed + 4000, transfer,
                                          "transfer", offset=len(task))
                artifacts.write_table(out / "downstream" / "transfer_test.parquet", columns, factors)
            columns, factors = render(world, data.defender_pairs, params.seed + 5000, None, "defender pairs")
            artifacts.write_table(out / "pairs.parquet", columns, factors)
            artifacts.write_json(out / "classes.json", {"classes": data.classes, "source": data.source,
                                                        "transfer_classes": data.transfer_classes})
        log.metric("corpus_pairs", data.corpus_size)
        for split in SPLITS:
            log.metric(f"{split}_images", sizes[split] * len(task))
    return (f"wrote {paths.CLEAN}: {data.corpus_size} pairs over {len(task) + len(transfer)} classes, "
            f"{data.defender_pairs} defender pairs")
