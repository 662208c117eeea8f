"""Stage `download`: the clean pretraining corpus, the labelled downstream splits, the
cross-task test sets, and the defender's clean image-text pairs.

The default source renders the synthetic glyph world, so the pipeline needs no network. The
corpus covers the task's classes and the transfer task's classes, as a web corpus covers
many downstream datasets; the transfer task gets only a test split.

`data.source: files` reads what the user brings instead (pipeline/datasets.py): an ImageFolder
tree for the downstream task (val carved out of train when it has none), one per cross-task
test set, and a corpus of img2dataset shards or an ImageFolder captioned with the templates.
The defender's pairs are the next data.defender_pairs corpus pairs after the corpus's own.
"""
from __future__ import annotations

import numpy as np

from pipeline import artifacts, datasets, paths
from pipeline.params import Params
from pipeline.tracking import stage_run
from rvpt.images import encode_png
from rvpt.world import FACTORS, GlyphWorld
from rvpt.progress import progress

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
    return from_files(params) if params.data.source == "files" else from_glyphs(params)


def from_files(params: Params) -> str:
    data, files, seed = params.data, params.data.files, params.seed
    folders, names = data.class_folders, data.class_names

    def fetch(spec):
        return datasets.local(spec, paths.DOWNLOADS, data.download_timeout_s, data.archive)

    # Fetched and checked before the run opens: a bad URL or archive leaves no trace.
    transfer_roots = {name: fetch(spec) for name, spec in files.transfer.items()}
    downstream_root, corpus_root = fetch(files.downstream), fetch(files.corpus)
    with stage_run("download", params.tracking.experiment, {"seed": seed, "data": data.model_dump()}) as log:
        with artifacts.atomic_dir(paths.CLEAN) as out:
            (out / "downstream").mkdir()
            root, spec = downstream_root, files.downstream
            train = datasets.shuffled(datasets.class_files(root, spec.train, folders), seed)
            if spec.val is None:  # carved out of train before the shots are drawn, so never among them
                val, train = [p[:data.val_per_class] for p in train], [p[data.val_per_class:] for p in train]
            else:
                val = datasets.shuffled(datasets.class_files(root, spec.val, folders), seed + 1)
            test = datasets.shuffled(datasets.class_files(root, spec.test, folders), seed + 2)
            check = datasets.Checked(data, str(root))
            writers = {split: datasets.write_labelled(out / "downstream" / f"{split}.parquet", chosen, per_class,
                                                      check)
                       for split, chosen, per_class in (("train", train, data.train_per_class),
                                                        ("val", val, data.val_per_class),
                                                        ("test", test, data.test_per_class))}
            check.finish()
            for name, spec in files.transfer.items():
                root = transfer_roots[name]
                check = datasets.Checked(data, str(root))
                chosen = datasets.shuffled(datasets.class_files(root, spec.split, list(spec.classes)), seed + 3)
                writers[name] = datasets.write_labelled(out / "downstream" / f"{name}_test.parquet", chosen,
                                                        spec.per_class, check)
                check.finish()
            sizes = {name: writer.close() for name, writer in writers.items()}
            repeated = len(writers["test"].hashes & (writers["train"].hashes | writers["val"].hashes))
            if repeated:
                artifacts.warn(f"{downstream_root}: {repeated} test images are also train or val images (same "
                               f"content); their CA is not a held-out measure")
            held_out = set().union(*(writer.hashes for writer in writers.values()))
            sizes["corpus"], sizes["pairs"], excluded = corpus_from_files(params, corpus_root, out, held_out)
            artifacts.write_json(out / "classes.json", {"classes": names, "folders": folders, "source": "files",
                                                        "transfer": data.transfer_sets(), "rows": sizes,
                                                        "corpus_excluded": excluded})
        for key, value in sizes.items():
            log.metric(f"{key}_images", value)
        log.metric("corpus_excluded_images", excluded)
    return (f"wrote {paths.CLEAN}: " + ", ".join(f"{key} {value}" for key, value in sizes.items())
            + f" ({excluded} corpus images excluded as downstream images or repeats)")


def corpus_from_files(params: Params, root, out, held_out: set[bytes]) -> tuple[int, int, int]:
    """(corpus pairs, defender pairs, images left out): none of them is a downstream image."""
    data, spec = params.data, params.data.files.corpus
    if spec.format == "image_folder":
        files = datasets.class_files(root, spec.split, data.class_folders)
        stream = datasets.folder_pairs(files, params.model.templates, data.class_names, params.seed + 4)
    else:
        stream = (datasets.parquet_pairs if spec.format == "parquet" else datasets.webdataset_pairs)(root)
    corpus = datasets.TableWriter(out / "corpus", shard_rows=data.shard_rows)
    pairs = datasets.TableWriter(out / "pairs.parquet")
    check = datasets.Checked(data, str(root))
    excluded = datasets.write_pairs(stream, [(corpus, data.corpus_size), (pairs, data.defender_pairs)], check,
                                    held_out)
    check.finish()
    if corpus.count < data.corpus_size:
        artifacts.warn(f"{root}: {corpus.count} readable pairs, fewer than data.corpus_size ({data.corpus_size})")
    if pairs.count == 0:
        artifacts.write_table(out / "pairs.parquet", {"image": [], "caption": [], "label": [], "poisoned": []})
        return corpus.close(), 0, excluded
    return corpus.close(), pairs.close(), excluded


def from_glyphs(params: Params) -> str:
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
    with stage_run("download", params.tracking.experiment, {"seed": params.seed, "data": data.model_dump()}) as log:
        with artifacts.atomic_dir(paths.CLEAN) as out:
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
        log.metric("corpus_pairs", data.corpus_size)
        for split in SPLITS:
            log.metric(f"{split}_images", sizes[split] * len(task))
    return (f"wrote {paths.CLEAN}: {data.corpus_size} pairs over {len(data.world_classes)} classes, "
            f"{data.defender_pairs} defender pairs")
