"""Logs a defended model to the active MLflow run as a pyfunc (pipeline/tracking/served_model.py) with a
signature, and registers it, so `mlflow.pyfunc.load_model` and `mlflow models serve` take it."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

SERVED = Path(__file__).with_name("served_model.py")
RVPT = Path(__file__).parents[2] / "rvpt"


def log_defended(backbone: Path, defense: Path, kind: str, classes: list[str], templates: list[str],
                 image_size: int, registered_name: str) -> None:
    """Logs the model and registers it as a new version of `registered_name`. When the defense's
    files sit in the backbone's own folder (an `rvpt defend` output), that folder is logged once."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per copy floods the stage log
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    signature = ModelSignature(inputs=Schema([ColSpec("binary", "image")]),
                               outputs=Schema([ColSpec("double", name) for name in classes]))
    with tempfile.TemporaryDirectory() as scratch:
        card = Path(scratch) / "card.json"
        card.write_text(json.dumps({"kind": kind, "classes": classes, "templates": templates,
                                    "image_size": image_size}))
        mlflow.pyfunc.log_model(
            name="model", python_model=str(SERVED), signature=signature,
            artifacts={"backbone": str(backbone), "card": str(card),
                       **({} if Path(defense) == Path(backbone) else {"defense": str(defense)})},
            code_paths=[str(RVPT)],  # the library the loader imports, so the model needs no checkout
            pip_requirements=_requirements(), registered_model_name=registered_name)


def _requirements() -> list[str]:
    """This environment's versions of what the loader imports; given, because MLflow's inference of
    them would load the model once more in a subprocess."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in
            ("mlflow", "torch", "torchvision", "open_clip_torch", "safetensors", "pillow", "numpy", "pandas")]
