"""The MLflow pyfunc model that serves a federated model (``models:/NAME@champion``).

Logged as *models from code* (:mod:`fl_core.mlflow_model_code`), so nothing is pickled: the
weights travel in the safe wire format and the architecture is rebuilt from its spec. Input:
raw float32 features ``(n, num_features)`` (a model trained with feature scaling
standardizes them itself); output: ``{"label": (n,) int64, "probabilities": (n, classes)
float32}``. A request of the wrong width gets a one-line error naming both widths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel


class InputShapeError(MlflowException):
    """A request that does not have the model's number of features (HTTP 400, one line).

    MLflow's scoring server prefixes the message of an ``MlflowException`` raised by a model
    with the whole request (``Failed to predict data '...'``); this message keeps its one
    line: assignments to ``message`` after construction are ignored.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        super().__init__(text, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._text

    @message.setter
    def message(self, value: str) -> None:
        pass


class FederatedClassifier(PythonModel):
    """Predicts class labels and class probabilities with the federated model's weights."""

    # The logged signature is explicit, so MLflow's type-hint validation of predict() has
    # nothing to add; skipping it (the switch MLflow's own ChatModel uses) also stops the
    # "Add type hints to the `predict` method" warning in every log that loads this model.
    # A warnings filter cannot: MLflow wraps that check in its own "once" filter.
    _skip_type_hint_validation = True

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
                raise InputShapeError(f"expected one input tensor, got {sorted(model_input)}")
            (model_input,) = model_input.values()
        x = np.asarray(model_input, dtype=np.float32)
        width = self.spec.num_features
        if x.ndim == 1 and x.size == width:
            x = x.reshape(1, width)
        if x.ndim != 2 or x.shape[1] != width:
            got = x.shape[1] if x.ndim == 2 else f"shape {tuple(x.shape)}"
            raise InputShapeError(
                f"expected rows of {width} features, got {got}; send "
                f'{{"inputs": [[{width} numbers], ...]}}'
            )
        with torch.no_grad():
            logits = self.model(torch.from_numpy(np.ascontiguousarray(x)))
            probabilities = torch.softmax(logits, dim=1)
        return {
            "label": logits.argmax(1).numpy().astype(np.int64),
            "probabilities": probabilities.numpy().astype(np.float32),
        }
