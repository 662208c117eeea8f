"""Logs a defended model to the active MLflow run as a pyfunc (pipeline/tracking/served_model.py) with a
signature, and registers it, so `mlflow.pyfunc.load_model` and `mlflow models serve` take it.

A backbone or defense given as a `runs:/` URI is referred to, not copied: a pipeline's cells share
their attack's backdoored model, which its pretrain run logs once (a ViT-B/32 is 600 MB, and the
paper's matrix has 35 cells). Loading such a model reads those artifacts through the tracking
store, so it needs MLFLOW_TRACKING_URI where the store is not the default one."""
from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

from pipeline.report.summary import IMPLANTED  # a cell's test ASR from which its backdoor counts as there

SERVED = Path(__file__).with_name("served_model.py")
BACKBONE = "model"     # the artifact folder of a pretrain run that holds its backdoored model
DEFENDED = "defended"  # the artifact folder of a tune run that holds what the defense wrote
RVPT = Path(__file__).parents[2] / "rvpt"


def log_defended(backbone: Path | str, defense: Path | str, kind: str, classes: list[str], templates: list[str],
                 image_size: int, registered_name: str) -> None:
    """Logs the model and registers it as a new version of `registered_name`. When the defense's
    files sit in the backbone's own folder (an `rvpt defend` output), that folder is logged once;
    a `runs:/` URI is kept as a reference in the card."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per copy floods the stage log
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    signature = ModelSignature(inputs=Schema([ColSpec("binary", "image")]),
                               outputs=Schema([ColSpec("double", name) for name in classes]))
    with tempfile.TemporaryDirectory() as scratch:
        card = Path(scratch) / "card.json"
        parts = {"backbone": backbone, **({} if defense == backbone else {"defense": defense})}
        references = {name: value for name, value in parts.items() if str(value).startswith("runs:/")}
        card.write_text(json.dumps({"kind": kind, "classes": classes, "templates": templates,
                                    "image_size": image_size, "references": references}))
        copied = {name: str(Path(value).resolve()) for name, value in parts.items() if name not in references}
        with contextlib.chdir(scratch):  # MLmodel records each artifact's source: a name, not a temporary path
            mlflow.pyfunc.log_model(
                name=registered_name, python_model=str(SERVED), signature=signature,
                artifacts={"card": card.name, **copied},
                input_example=example_input(image_size),
                code_paths=[str(RVPT)],  # the library the loader imports, so the model needs no checkout
                pip_requirements=_requirements(), registered_model_name=registered_name)


def example_input(image_size: int):
    """What the served model takes: a DataFrame with one encoded image (a mid-grey PNG) per row."""
    import io

    import pandas as pd
    from PIL import Image

    encoded = io.BytesIO()
    Image.new("RGB", (image_size, image_size), (128, 128, 128)).save(encoded, format="PNG")
    return pd.DataFrame({"image": [encoded.getvalue()]})


def _requirements() -> list[str]:
    """This environment's versions of what the loader imports; given, because MLflow's inference of
    them would load the model once more in a subprocess."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in
            ("mlflow", "torch", "torchvision", "open_clip_torch", "safetensors", "pillow", "numpy", "pandas")]


def describe_versions(cells: dict[str, dict]) -> None:
    """After evaluation, each registered cell (found by its tune run) says what it does: its test
    figures as the logged model's metrics, tags, and a description that opens with whether the
    backdoor survived. `cells` maps a tune run id to its summary row."""
    import mlflow

    client = mlflow.MlflowClient()
    for run_id, row in cells.items():
        for version in client.search_model_versions(f"run_id = '{run_id}'"):
            verdict = version_verdict(row)
            client.update_model_version(version.name, version.version, description=verdict["description"])
            for key, value in verdict["tags"].items():
                client.set_model_version_tag(version.name, version.version, key, value)
            if version.model_id:
                mlflow.log_metrics(verdict["metrics"], run_id=run_id, model_id=version.model_id)


def version_verdict(row: dict) -> dict:
    """A registered cell's description, tags and metrics, from its summary row. The undefended
    models are registered too (tagged undefended), to be compared and served beside their defenses."""
    asr, ca = row["attack_success_rate"], row["clean_accuracy"]
    implanted, undefended = row.get("implanted"), row["defense"] == "none"
    survived = bool(implanted) and asr >= IMPLANTED
    if implanted is False:
        headline = f"Its attack did not implant (undefended test ASR under {100 * IMPLANTED:.0f}%): nothing to remove."
    elif undefended:
        headline = f"Undefended: the backdoored model as the attacker shipped it (test ASR {100 * asr:.1f}%)."
    else:
        headline = (f"Backdoor {'IMPLANTED' if survived else 'removed'}: test ASR {100 * asr:.1f}% "
                    f"(undefended {100 * row['undefended_asr']:.1f}%)." if row.get("undefended_asr") is not None
                    else f"Backdoor {'IMPLANTED' if survived else 'removed'}: test ASR {100 * asr:.1f}%.")
    description = (f"{headline} Clean accuracy {100 * ca:.1f}%. {row['attack']} attack, {row['defense']} defense. "
                   "Input: a DataFrame with an `image` column of encoded images (PNG, JPEG); output: one "
                   "probability column per class.")
    tags = {"attack": row["attack"], "defense": row["defense"], "undefended": str(undefended).lower(),
            "implanted": "unknown" if implanted is None else str(implanted).lower(),
            "backdoor_survived": str(survived).lower()}
    metrics = {f"test_{key}": row[key] for key in ("clean_accuracy", "attack_success_rate", "control_attack_success_rate",
                                                    "target_rate") if row.get(key) is not None}
    return {"description": description, "tags": tags, "metrics": metrics}
