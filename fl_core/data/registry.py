"""Register the user's own dataset in ``params.yaml`` (``fl init-dataset``).

A registered dataset is an entry of the ``datasets`` section (path, label column, client
column) plus its file under ``data/raw/`` (a symlink to the user's file, or a copy). The
``prepare`` stage of ``dvc.yaml`` depends on ``data/raw``, so editing the file makes
``dvc repro`` prepare the data again. ``params.yaml`` is edited round-trip (comments and
order kept) and only after the result validates: a bad registration changes nothing.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from fl_core.config import (
    BUILTIN_DATASETS,
    DATASET_NAME_PATTERN,
    ConfigError,
    derived_names,
    from_dict,
)

__all__ = ["RAW_DIR", "DatasetRegistrationError", "register_dataset"]

logger = logging.getLogger(__name__)

#: Where registered datasets' files live (the ``prepare`` stage's dependency).
RAW_DIR = Path("data") / "raw"


class DatasetRegistrationError(ValueError):
    """The dataset cannot be registered; the message says why (nothing was changed)."""


def register_dataset(
    params: Path,
    *,
    name: str,
    file: Path,
    label_column: str,
    client_column: str | None,
    copy: bool = False,
    select: bool = True,
    root: Path = Path("."),
) -> dict[str, Any]:
    """Register ``file`` as dataset ``name`` in ``params`` (see the module docstring).

    Parameters
    ----------
    params
        The ``params.yaml`` to edit.
    name
        Dataset name: :data:`fl_core.config.DATASET_NAME_PATTERN`, not a built-in's name.
    file
        The user's CSV or Parquet table.
    label_column, client_column
        Its integer label column and (optional) natural client id column; both must exist.
    copy
        Copy the file under ``data/raw/`` instead of symlinking it.
    select
        Also set ``data.dataset: name`` (and ``partition.scheme: natural`` with a client
        column).
    root
        The project root (``data/raw`` is created under it).

    Returns
    -------
    dict
        ``path`` (as registered), ``how`` (``symlink``/``copy``/``in place``),
        ``campaign_name`` and ``registered_model`` (as derived after the registration).

    Raises
    ------
    DatasetRegistrationError
        Bad name, missing file or column, a different file already registered under that
        name, or a resulting ``params.yaml`` that does not validate.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    from fl_core.data.datasets import table_columns

    if name in BUILTIN_DATASETS or not re.fullmatch(DATASET_NAME_PATTERN, name):
        raise DatasetRegistrationError(
            f"dataset name {name!r} is not allowed: 1..40 characters from a-z 0-9 _ -, starting "
            f"with a letter or digit, not one of {', '.join(BUILTIN_DATASETS)}"
        )
    source = Path(file)
    if not source.is_file():
        raise DatasetRegistrationError(f"file {file} not found")
    try:
        columns = table_columns(source)
    except ValueError as exc:
        raise DatasetRegistrationError(str(exc)) from None
    for what, column in (("label", label_column), ("client", client_column)):
        if column is not None and column not in columns:
            raise DatasetRegistrationError(
                f"{what} column {column!r} not in {file} (columns: {', '.join(columns[:20])})"
            )
    if client_column is not None and client_column == label_column:
        raise DatasetRegistrationError("the client column cannot be the label column")

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    doc = yaml.load(params.read_text()) if params.exists() else CommentedMap()
    doc = doc if doc is not None else CommentedMap()
    target_rel = RAW_DIR / f"{name}{source.suffix.lower()}"
    target = root / target_rel
    registry = doc.get("datasets") or CommentedMap()
    if not isinstance(registry, CommentedMap):
        registry = CommentedMap(registry)
    registry.fa.set_block_style()
    entry = CommentedMap(path=str(target_rel), label_column=label_column)
    entry["client_column"] = client_column
    registry[name] = entry
    doc["datasets"] = registry
    if select:
        doc.setdefault("data", CommentedMap())["dataset"] = name
        if client_column is not None:
            doc.setdefault("partition", CommentedMap())["scheme"] = "natural"
    buf = io.StringIO()
    yaml.dump(doc, buf)
    try:
        cfg = from_dict(YAML(typ="safe").load(buf.getvalue()))
    except ConfigError as exc:
        raise DatasetRegistrationError(f"{params} would not validate: {exc}") from None

    how = _place(source, target, copy=copy)
    params.write_text(buf.getvalue())
    campaign_name, model_name = derived_names(cfg)
    logger.info("registered dataset %s -> %s (%s)", name, target_rel, how)
    return {
        "path": str(target_rel),
        "how": how,
        "campaign_name": cfg.campaign.name if select else campaign_name,
        "registered_model": cfg.tracking.registered_model if select else model_name,
    }


def _place(source: Path, target: Path, *, copy: bool) -> str:
    """Put ``source`` at ``target``: nothing if it already is that file, else a copy or a
    symlink; refuses to replace a different existing file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        if target.exists() and target.resolve() == source.resolve():
            return "in place"
        raise DatasetRegistrationError(
            f"{target} already exists and is another file; remove it first to re-register"
        )
    if copy:
        shutil.copyfile(source, target)
        return "copy"
    target.symlink_to(source.resolve())
    return "symlink"
