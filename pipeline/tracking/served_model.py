"""A defended model as an MLflow pyfunc: encoded images in, class probabilities out.

MLflow logs this file as code ("models from code") and runs it when the model is loaded, so a
logged model is read back from safetensors and JSON alone: nothing is unpickled. Its artifacts:
`backbone` (the open_clip local-dir model the defense started from), `defense` (what the defense
wrote: prompts, a head, a context, or whole weights; absent when it lies in the backbone's folder)
and `card` (kind, classes, templates, size). A part the card lists under `references` is a
`runs:/` URI instead (a pipeline's backbone, logged once by its pretrain run): it is read through
the tracking store into a temporary folder, loaded, and the folder removed.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel


class DefendedClassifier(PythonModel):
    def load_context(self, context) -> None:
        from rvpt import models
        from rvpt.defenses.registry import KINDS

        card = json.loads(Path(context.artifacts["card"]).read_text())
        with tempfile.TemporaryDirectory() as scratch:
            parts = {**context.artifacts, **{name: mlflow.artifacts.download_artifacts(uri, dst_path=f"{scratch}/{name}")
                                             for name, uri in card.get("references", {}).items()}}
            model, config = models.load(parts["backbone"])
            defended = KINDS[card["kind"]].load(model, Path(parts.get("defense", parts["backbone"])),
                                                models.tokenizer(config), card["templates"])
        self.defended = defended.eval()
        self.classes, self.image_size = card["classes"], card["image_size"]
        self.classifier = defended.classifier(self.classes)
        # Zero-shot kinds were trained on scaled cosines; a linear head's logits are its own.
        self.scale = float(model.logit_scale.detach().exp()) if defended.reads_text else 1.0

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from rvpt.images import normalize, to_unit_tensor

        pixels = np.stack([decoded(blob, i, self.image_size) for i, blob in enumerate(images_of(model_input))])
        with torch.no_grad():
            features = self.defended.encode_image(normalize(to_unit_tensor(pixels)))
            logits = self.defended.logits(features.float(), self.classifier) * self.scale
        return pd.DataFrame(torch.softmax(logits, dim=-1).double().numpy(), columns=self.classes)


def images_of(model_input) -> list:
    """The request's `image` column, or a 400 that says what the request should hold."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns or model_input.empty:
        raise MlflowException("expected a DataFrame with an `image` column of encoded images, one per row, e.g. "
                              '{"dataframe_split": {"columns": ["image"], "data": [["<base64 PNG or JPEG>"]]}}',
                              INVALID_PARAMETER_VALUE)
    return list(model_input["image"])


def decoded(blob, row: int, image_size: int) -> np.ndarray:
    """One request image as pixels, or a 400 naming the row that is no image."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    from rvpt.errors import BadInput
    from rvpt.images import decode_image

    try:
        return decode_image(bytes(blob), image_size, f"image {row}")[0]
    except (BadInput, TypeError, ValueError, OSError) as error:
        raise MlflowException(f"row {row}: not a decodable image (PNG, JPEG, ...): {error}",
                              INVALID_PARAMETER_VALUE) from None


mlflow.models.set_model(DefendedClassifier())
