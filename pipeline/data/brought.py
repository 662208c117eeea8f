"""Data the user brings (`data.source: files`), written as the pipeline's tables: an ImageFolder
tree for the downstream task (val carved out of train when it has none), one per cross-task test
set, and a corpus of img2dataset shards or an ImageFolder captioned with the templates. The
defender's pairs are the next data.defender_pairs corpus pairs after the corpus's own. No corpus
pair is a downstream image (by content hash), so the test split stays held out."""
from __future__ import annotations

from pathlib import Path

from pipeline.config.params import Params
from pipeline.data import datasets
from pipeline.store import artifacts, paths


def fetch(params: Params) -> dict[str, Path]:
    """Every folder data.files names, local: URLs downloaded and archives extracted, both
    sha256-checked. Done before the stage's run opens, so a bad URL or archive leaves no trace."""
    data, files = params.data, params.data.files

    def local(spec):
        return datasets.local(spec, paths.DOWNLOADS, data.download_timeout_s, data.archive)

    roots = {f"transfer.{name}": local(spec) for name, spec in files.transfer.items()}
    return {**roots, "downstream": local(files.downstream), "corpus": local(files.corpus)}


def write(params: Params, roots: dict[str, Path], out: Path) -> tuple[dict[str, int], str]:
    """The downstream splits, the cross-task test sets and the corpus into `out`; (rows per table,
    what was written, in words)."""
    data = params.data
    writers = downstream(params, roots, out)
    sizes = {name: writer.close() for name, writer in writers.items()}
    repeated = len(writers["test"].hashes & (writers["train"].hashes | writers["val"].hashes))
    if repeated:
        artifacts.warn(f"{roots['downstream']}: {repeated} test images are also train or val images (same "
                       f"content); their CA is not a held-out measure")
    held_out = set().union(*(writer.hashes for writer in writers.values()))
    sizes["corpus"], sizes["pairs"], excluded = corpus_from_files(params, roots["corpus"], out, held_out)
    artifacts.write_json(out / "classes.json", {"classes": data.class_names, "folders": data.class_folders,
                                                "source": "files", "transfer": data.transfer_sets(), "rows": sizes,
                                                "corpus_excluded": excluded})
    said = ", ".join(f"{key} {value}" for key, value in sizes.items())
    return {**sizes, "corpus_excluded": excluded}, f"{said} ({excluded} corpus images excluded as downstream " \
                                                   f"images or repeats)"


def downstream(params: Params, roots: dict[str, Path], out: Path) -> dict[str, datasets.TableWriter]:
    """The downstream splits and the cross-task test sets, each table's writer by name (open)."""
    data, files, seed = params.data, params.data.files, params.seed
    folders = data.class_folders
    (out / "downstream").mkdir()
    root, spec = roots["downstream"], files.downstream
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
        root = roots[f"transfer.{name}"]
        check = datasets.Checked(data, str(root))
        chosen = datasets.shuffled(datasets.class_files(root, spec.split, list(spec.classes)), seed + 3)
        writers[name] = datasets.write_labelled(out / "downstream" / f"{name}_test.parquet", chosen,
                                                spec.per_class, check)
        check.finish()
    return writers


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
