"""The edge client agent: ``fl client run`` next to the private data.

It enrolls once with a one-time token (an Ed25519 key pair generated here; the private key
never leaves the client home), then heartbeats, long-polls tasks, downloads the model,
trains through the client code path, uploads signed updates and reports federated
evaluation metrics. Raw data never leaves the device. Nothing is imported here.
"""
