"""`rvpt scan`: is a model you were handed backdoored, and towards which class? Trigger inversion
(rvpt/scan.py) on its zero-shot classifier over your clean images, with no trigger given.

The inputs are `rvpt defend`'s, read the same way: the model is untrusted and nothing in it is
unpickled. An `rvpt defend` output folder is scanned with what its defense trained (prompts, a
linear head, a CoOp context), so the same command tells whether a defense worked.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from pipeline.data import sources
from pipeline.store import artifacts
from pipeline.commands.defend import brought_images, class_names, load_model
from pipeline.config.params import Params
from pipeline.config.scanner import scanner
from pipeline.scoring.scanner import scanning
from rvpt import compute, files, models
from rvpt.defenses.base import ZeroShot
from rvpt.defenses.registry import KINDS
from rvpt.errors import BadInput

REPORT = "scan.json"


def verdict(report: dict) -> str:
    kind = report["suspect_kind"]
    size = report["classes"][report["suspect"]][kind]["size"]
    middle = statistics.median(found[kind]["size"] for found in report["classes"].values())
    word = f", with the word {report['suspect_word']!r}" if report.get("suspect_word") else ""
    smaller = (f"its {kind} trigger ({size:.1%} of the image{word}) is {middle / size:.1f}x smaller than the classes' "
               f"median, anomaly index {report['anomaly_index']:.1f}")
    if report["flagged"]:
        return (f"BACKDOOR SUSPECTED towards {report['target']!r}: {smaller} > {report['threshold']:g}; held-out "
                f"ASR {report['held_out_success']:.0%}")
    return f"no backdoor found: the most anomalous class is {report['suspect']!r}: {smaller} <= {report['threshold']:g}"


def defended_by(folder: Path, model, model_cfg: dict, templates: list[str]):
    """The model as `rvpt defend` left it in `folder` (with what its defense trained), or zero-shot."""
    tokenize = models.tokenizer(model_cfg)
    note = folder / "defend.json"
    if not folder.is_dir() or not note.is_file():
        return ZeroShot(model, tokenize, templates), None
    found = files.read_json(note, 1 << 20)
    kind = found.get("kind") if isinstance(found, dict) else None
    if kind not in KINDS:
        raise BadInput(f"{note}: unknown defense kind {kind!r}")
    try:
        return KINDS[kind].load(model, folder, tokenize, templates), kind
    except (ValueError, KeyError, RuntimeError) as error:
        raise BadInput(f"{folder}: {error}") from None


def run(params: Params, model_source: str, data_source: str, out: Path, config: str | None,
        model_sha256: str | None, data_sha256: str | None, names_file: Path | None, cache: Path) -> str:
    if out.exists() and not (out / REPORT).is_file():
        raise BadInput(f"--out {out}: exists and is not an earlier `rvpt scan` output; it would be replaced")
    artifacts.check_writable(out, "--out")
    timeout = params.defend.download_timeout_s
    model, model_cfg, weights = load_model(model_source, config, model_sha256, cache, timeout, params.data.archive)
    classes, (images, labels), (held_images, held_labels), skipped = brought_images(
        params, data_source, data_sha256, cache, model)
    names = class_names(classes, names_file)
    defended, kind = defended_by(weights.parent, model, model_cfg, params.defend.templates)
    defended.to(compute.placement(params.compute.device, params.compute.precision).device)
    result, png = scanning(params, defended, names, (images, labels), (held_images, held_labels))
    report = {"model": model_source, "weights_sha256": sources.sha256_of(weights), "defense_kind": kind,
              "data": data_source, "images": len(labels), "skipped_images": skipped,
              "settings": scanner(params).model_dump(), **result.report()}
    with artifacts.atomic_dir(out) as folder:
        artifacts.write_json(folder / REPORT, report)
        (folder / "triggers.png").write_bytes(png)
    return verdict(report)
