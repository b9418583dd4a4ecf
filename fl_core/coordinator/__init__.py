"""The coordinator: the HTTP service real edge clients talk to, and its client registry.

``create_app(settings)`` (in :mod:`fl_core.coordinator.app`) builds the FastAPI app;
:class:`fl_core.coordinator.api.Coordinator` is the Python API the round steps call;
:mod:`fl_core.coordinator.protocol` holds what the agent shares with it. Nothing is imported
here, so ``import fl_core.coordinator.protocol`` stays light.
"""
