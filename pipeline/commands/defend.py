"""`rvpt defend`: a defense (RVPT by default) on a model and a few-shot image folder the user brings.

The model is untrusted: it is read without unpickling (rvpt.checkpoint). The data is an
ImageFolder tree, root/<class>/*.jpg, or root/train/<class>/* with root/test/<class>/*; without a
test/ folder, params' defend.holdout of each class is held out. CA on the held-out images is
reported before and after. The output folder is an open_clip local-dir model (the defended one
for whole-model defenses, the input one otherwise) plus what the defense trained next to it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch

from pipeline.data import sources
from pipeline.methods import defenses
from pipeline.store import artifacts
from pipeline.tracking import location, runs
from pipeline.config.defenses import defense
from pipeline.config.params import Params
from pipeline.config.data import check_names
from pipeline.scoring.scanner import scanning
from pipeline.tracking.runs import Unlogged
from rvpt import checkpoint, compute, files, metrics, models, scan
from rvpt.defenses.base import ZeroShot
from rvpt.defenses.loop import DefenderData
from rvpt.defenses.registry import KINDS, fits
from rvpt.errors import BadInput
from rvpt.images import decode_many
from rvpt.model_config import ModelShape
from rvpt.zeroshot import image_features


def model_config(config: str | None, weights: Path) -> dict:
    """A model config from an open_clip config JSON file, a bare model-config JSON, or an open_clip name."""
    if config is None:
        raise BadInput(f"{weights}: a weights file needs --config (an open_clip model name or config JSON)")
    path = Path(config)
    if path.exists():
        loaded = files.read_json(path, CONFIG_LIMIT, "--config ")
        loaded = loaded.get("model_cfg", loaded) if isinstance(loaded, dict) else loaded
        if not isinstance(loaded, dict):
            raise BadInput(f"{path}: not an open_clip model config")
        return loaded
    named = open_clip.get_model_config(config)  # configs ship inside the open_clip wheel
    if named is None:
        raise BadInput(f"--config {config!r}: neither a file nor an open_clip model name")
    return named


CONFIG_LIMIT = 1 << 20  # an open_clip config is a few KB


def load_model(source: str, config: str | None, sha256: str | None, cache: Path, timeout: float, limits):
    """(model, its config, its weights file) from a local-dir folder, a weights file, an archive of
    either or a URL; an archive extracted for a model that is then refused is removed again."""
    with sources.fetched(source, cache, sha256, timeout, limits) as path:
        if path.is_dir():
            model, model_cfg = models.load(path)
            return model, model_cfg, checkpoint.find_weights(path)
        model_cfg = model_config(config, path)
        return models.from_weights(model_cfg, path, config), model_cfg, path


def read_folder(root: Path, holdout: float, seed: int, size: int, data):
    """Class folder names, then (images, labels) to tune on and to hold out, and how many files were skipped.

    Unreadable files are skipped (and named on stderr) before the split, so the allowed share
    (data.max_bad_fraction) counts over the whole folder.
    """
    given = (root / "train").is_dir() and (root / "test").is_dir()
    parts = ["train", "test"] if given else [""]
    found = [sources.image_folder(root / part) for part in parts]
    classes = found[0][0]
    if any(other != classes for other, _ in found):
        raise BadInput(f"{root}: train/ and test/ hold different class folders")
    entries = [(label, path, part == "test") for part, (_, files) in zip(parts, found)
               for label, name in enumerate(classes) for path in files[name]]
    # Paths, not bytes: each file is size-checked and its header read before its body.
    decoded = decode_many([path for _, path, _ in entries], size, str(root), data.max_bad_fraction,
                          data.max_image_pixels, names=[str(path) for _, path, _ in entries])
    for message in decoded.skipped:
        artifacts.warn(f"skipped {message}")
    if decoded.scaled:
        artifacts.warn(f"{root}: scaled {decoded.scaled} 16-bit or float images to 8 bits")
    labels = np.array([entries[i][0] for i in decoded.kept])
    held = np.array([entries[i][2] for i in decoded.kept])
    if not given:
        rng = np.random.default_rng(seed)
        for label, name in enumerate(classes):
            rows = np.flatnonzero(labels == label)
            if len(rows) < 2:
                raise BadInput(f"{root / name}: needs at least two readable images (one to tune on, one to hold out)")
            held[rng.permutation(rows)[:min(len(rows) - 1, max(1, round(holdout * len(rows))))]] = True
    images = torch.from_numpy(decoded.pixels).permute(0, 3, 1, 2)  # uint8, converted batch by batch
    labels = torch.from_numpy(labels)
    return classes, (images[~held], labels[~held]), (images[held], labels[held]), len(decoded.skipped)


def brought_images(params: Params, source: str, sha256: str | None, cache: Path, model):
    """`read_folder` on the images a user brings (a folder, an archive or a URL), at the model's
    input size; an archive extracted for images that are then refused is removed again."""
    with sources.fetched(source, cache, sha256, params.defend.download_timeout_s, params.data.archive) as root:
        return read_folder(root, params.defend.holdout, params.seed, input_size(model), params.data)


def input_size(model) -> int:
    size = model.visual.image_size  # open_clip's towers keep it as (height, width)
    return size if isinstance(size, int) else size[0]


def class_names(classes: list[str], names_file: Path | None) -> list[str]:
    if names_file is None:
        names, where = [name.replace("_", " ") for name in classes], "class folders"
    else:
        names = [line.strip() for line in files.read_text(names_file, 1 << 20, "--classnames ").splitlines()
                 if line.strip()]
        if len(names) != len(classes):
            raise BadInput(f"{names_file}: {len(names)} names for {len(classes)} class folders (one per line, "
                           f"in sorted folder order)")
        where = str(names_file)
    try:
        check_names(names, where)
    except ValueError as error:
        raise BadInput(str(error)) from None
    return names


@dataclass
class Brought:
    """What the user brought, read and checked: the model (with its config and weights file) and
    the images (class names, the shots to tune on, the held-out ones to score)."""

    model: object
    model_cfg: dict
    weights: Path
    names: list[str]
    shots: tuple[torch.Tensor, torch.Tensor]
    held: tuple[torch.Tensor, torch.Tensor]
    skipped: int


def bring(params: Params, model_source: str, data_source: str, config: str | None, model_sha256: str | None,
          data_sha256: str | None, names_file: Path | None, cache: Path) -> Brought:
    spec = defense(params, params.defend.defense)
    if defenses.pairs_needed(params, params.defend.defense):
        raise BadInput(f"defend.defense: {params.defend.defense!r} needs image-text pairs; use pairs: fewshot")
    timeout = params.defend.download_timeout_s
    model, model_cfg, weights = load_model(model_source, config, model_sha256, cache, timeout, params.data.archive)
    problem = fits(KINDS[spec.kind], defenses.settings(params, params.defend.defense), ModelShape.of(model_cfg))
    if problem:
        raise BadInput(f"defenses.{params.defend.defense}.{problem} ({model_source})")
    classes, shots, held, skipped = brought_images(params, data_source, data_sha256, cache, model)
    return Brought(model, model_cfg, weights, class_names(classes, names_file), shots, held, skipped)


def defend(params: Params, brought: Brought) -> tuple[object, dict, dict, dict]:
    """(defended model, training history, report, scans before and after): CA on the held-out
    images before and after, and with defend.scan the trigger inversion before and after."""
    spec = defense(params, params.defend.defense)
    tokenize, templates = models.tokenizer(brought.model_cfg), params.defend.templates
    placement = compute.placement(params.compute.device, params.compute.precision)

    def accuracy(defended) -> float | None:
        defended.to(placement.device)
        features = image_features(defended.encode_image, brought.held[0], params.evaluate.batch_size,
                                  placement=placement)
        return metrics.clean_accuracy(defended, features, brought.held[1], brought.names)

    original = ZeroShot(brought.model, tokenize, templates)
    before = accuracy(original)
    scanned = {"before": scanning(params, original, brought.names, brought.shots, brought.held)
               if params.defend.scan else None}
    defended, history = defenses.fit(params, params.defend.defense, brought.model,
                                     DefenderData(*brought.shots, brought.names), tokenize, templates,
                                     f"defend {params.defend.defense}")
    after = accuracy(defended)
    scanned["after"] = scanning(params, defended, brought.names, brought.shots, brought.held) \
        if params.defend.scan else None
    report = {"defense": params.defend.defense, "kind": spec.kind, "classes": brought.names,
              "weights_sha256": sources.sha256_of(brought.weights), "train_images": len(brought.shots[1]),
              "heldout_images": len(brought.held[1]), "skipped_images": brought.skipped,
              "clean_accuracy_before": before, "clean_accuracy_after": after, "settings": spec.model_dump()}
    if params.defend.scan:
        first, _ = scanned["before"]
        report["scan_before"], report["scan_after"] = (result.report() for result, _ in scanned.values())
        # Did the defense work? The trigger inverted before it, tried on the defended model.
        report["residual_success"] = scan.suspect_success(first, defended, *brought.held, params.evaluate.batch_size)
    return defended, history, report, scanned


def run(params: Params, model_source: str, data_source: str, out: Path, config: str | None,
        model_sha256: str | None, data_sha256: str | None, names_file: Path | None, cache: Path,
        track: bool = True) -> str:
    """Defends the model, writes --out, and (with `track`) logs an MLflow run and registers the
    defended model as `rvpt-defend-<defense>`, in the store stages use (MLFLOW_TRACKING_URI, or
    ./mlflow.db)."""
    if out.exists() and not (out / "defend.json").is_file():
        raise BadInput(f"--out {out}: exists and is not an earlier `rvpt defend` output; it would be replaced")
    artifacts.check_writable(out, "--out")
    if track:
        location.check_reachable(params.tracking.timeout_s)
    brought = bring(params, model_source, data_source, config, model_sha256, data_sha256, names_file, cache)
    defended, history, report, scanned = defend(params, brought)
    report |= {"model": model_source, "data": data_source}
    spec = defense(params, params.defend.defense)
    logged = {"defend": params.defend.model_dump(), "defense": spec.model_dump(), "seed": params.seed}
    with runs.stage_run("defend", params.tracking.experiment, logged, {"defense": params.defend.defense},
                        grouped=False) if track else contextlib.nullcontext(Unlogged()) as log:
        report["mlflow_run_id"] = log.id or None
        with artifacts.atomic_dir(out) as folder:
            # The input model, as safetensors; a whole-model defense overwrites it with its own.
            models.save(brought.model, brought.model_cfg, folder)
            defenses.save(params, params.defend.defense, defended, history, folder, brought.model_cfg,
                          {"defense": params.defend.defense, "kind": spec.kind})
            artifacts.write_json(folder / "defend.json", report)
            for when, (result, png) in scanned.items() if params.defend.scan else ():
                (folder / f"scan_{when}.png").write_bytes(png)
        for key in ("clean_accuracy_before", "clean_accuracy_after", "residual_success"):
            if report.get(key) is not None:
                log.metric(key, report[key])
        log.model(backbone=out, defense=out, kind=spec.kind, classes=brought.names, templates=params.defend.templates,
                  image_size=input_size(brought.model), registered_name=f"rvpt-defend-{params.defend.defense}")
    after = report["clean_accuracy_after"]
    shown = "n/a" if after is None else f"{after:.3f}"
    return (f"wrote {out}: CA before {report['clean_accuracy_before']:.3f}, after {shown} on "
            f"{report['heldout_images']} held-out images of {len(brought.names)} classes "
            f"({report['skipped_images']} unreadable skipped){scan_line(report)}")


def scan_line(report: dict) -> str:
    if "scan_before" not in report:
        return ""

    def said(found: dict) -> str:
        return f"flagged {found['target']!r}" if found["flagged"] else "not flagged"

    return (f"; scan before: {said(report['scan_before'])}, after: {said(report['scan_after'])}, residual ASR of "
            f"the inverted trigger {report['residual_success']:.0%}")
