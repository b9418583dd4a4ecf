"""The MLflow pyfunc model that serves a federated model (``models:/NAME@champion``).

Logged as *models from code* (:mod:`fl_core.mlflow_model_code`), so nothing is pickled: the
weights travel in the safe wire format and the architecture is rebuilt from its spec. Input:
a float32 tensor ``(n, num_features)``; output: the predicted class per row (int64).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.pyfunc import PythonModel


class FederatedClassifier(PythonModel):
    """Predicts class labels with the federated model's weights."""

    def load_context(self, context: Any) -> None:
        from fl_core import wire
        from fl_core.models import ModelSpec, build_model, set_flat

        self.spec = ModelSpec.from_json(json.loads(Path(context.artifacts["spec"]).read_text()))
        _, vector = wire.decode(Path(context.artifacts["weights"]).read_bytes())
        self.model = build_model(self.spec)
        set_flat(self.model, vector)
        self.model.eval()

    # No type hints on predict: MLflow would read them as a schema (the signature is explicit).
    def predict(self, context, model_input, params=None):
        import torch

        if isinstance(model_input, dict):  # a named tensor input arrives as {name: array}
            if len(model_input) != 1:
                raise ValueError(f"expected one input tensor, got {sorted(model_input)}")
            (model_input,) = model_input.values()
        x = np.asarray(model_input, dtype=np.float32).reshape(-1, self.spec.num_features)
        with torch.no_grad():
            logits = self.model(torch.from_numpy(x))
        return logits.argmax(1).numpy().astype(np.int64)
