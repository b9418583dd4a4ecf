"""Models-from-code entry point for MLflow: sets the pyfunc model (no pickling)."""

import mlflow.models

from fl_core.serving import FederatedClassifier

mlflow.models.set_model(FederatedClassifier())
