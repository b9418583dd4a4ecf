"""Federated datasets: loading, partitioning, on-disk format and validation.

On-disk contract (shared by every stage):

* A *table* is a Parquet file with feature columns ``x0 .. x{d-1}`` (float32) and an
  integer ``label`` column (int64). Nothing else.
* ``data/prepared/{train,test}.parquet`` and ``data/prepared/meta.json`` are written by the
  ``prepare`` stage. ``meta.json`` holds ``dataset``, ``num_features``, ``num_classes``,
  ``input_shape`` (e.g. ``[1, 28, 28]``), ``labels``, ``feature_min`` / ``feature_max``
  (``null`` when unbounded) and, for datasets with natural clients, nothing else: the natural
  client id of each train row is kept in ``data/prepared/train_clients.parquet``.
* ``data/clients/client_NNNN.parquet`` (one table per client) and
  ``data/clients/manifest.json`` are written by the ``partition`` stage. The manifest lists
  every client's id, file, ``num_examples``, ``label_counts`` and ``sha256`` (the data version).
"""
