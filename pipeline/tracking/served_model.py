"""A defended model as an MLflow pyfunc: encoded images in, class probabilities out.

MLflow logs this file as code ("models from code") and runs it when the model is loaded, so a
logged model is read back from safetensors and JSON alone: nothing is unpickled. Its artifacts:
`backbone` (the open_clip local-dir model the defense started from), `defense` (what the defense
wrote: prompts, a head, a context, or whole weights; absent when it lies in the backbone's folder)
and `card` (kind, classes, templates, size).
"""
from __future__ import annotations

import json
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
        model, config = models.load(context.artifacts["backbone"])
        trained = Path(context.artifacts.get("defense", context.artifacts["backbone"]))
        defended = KINDS[card["kind"]].load(model, trained, models.tokenizer(config),
                                            card["templates"])
        self.defended = defended.eval()
        self.classes, self.image_size = card["classes"], card["image_size"]
        self.classifier = defended.classifier(self.classes)
        # Zero-shot kinds were trained on scaled cosines; a linear head's logits are its own.
        self.scale = float(model.logit_scale.detach().exp()) if defended.reads_text else 1.0

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from rvpt.images import decode_image, normalize, to_unit_tensor

        pixels = np.stack([decode_image(bytes(blob), self.image_size, f"image {i}")[0]
                           for i, blob in enumerate(model_input["image"])])
        with torch.no_grad():
            features = self.defended.encode_image(normalize(to_unit_tensor(pixels)))
            logits = self.defended.logits(features.float(), self.classifier) * self.scale
        return pd.DataFrame(torch.softmax(logits, dim=-1).double().numpy(), columns=self.classes)


mlflow.models.set_model(DefendedClassifier())
