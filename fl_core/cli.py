"""``fl``: the project's one command-line entry point (the DVC stages and the Makefile call it).

Every command reads ``params.yaml`` (validated before any work: a wrong key or value exits
with status 2 and names the key and the allowed values).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from fl_core import stages
from fl_core.cli_remote import add_remote_commands
from fl_core.config import Config, ConfigError, load_params

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
add_remote_commands(app)

ParamsOpt = typer.Option(Path("params.yaml"), "--params", "-p", help="The params file.")


def _setup(params: Path, verbose: bool = False) -> Config:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("great_expectations", "mlflow", "alembic", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return load_params(params)
    except (ConfigError, FileNotFoundError) as exc:
        typer.echo(f"configuration error in {params}: {exc}", err=True)
        raise typer.Exit(2) from None


def _paths() -> stages.Paths:
    return stages.Paths(Path("."))


@app.command()
def check(params: Path = ParamsOpt) -> None:
    """Validate params.yaml and the dataset's file (exists, label and client columns), then
    print the resolved configuration."""
    import json

    cfg = _setup(params)
    problems = stages.check_source(cfg, _paths())
    if problems:
        for problem in problems:
            typer.echo(f"configuration error in {params}: {problem}", err=True)
        raise typer.Exit(2)
    typer.echo(json.dumps(cfg.to_dict(), indent=1))
    typer.echo(
        f"dataset {cfg.data.dataset}: campaign name {cfg.campaign.name}, registered model "
        f"{cfg.tracking.registered_model}",
        err=True,
    )


@app.command("init-dataset")
def init_dataset(
    name: str = typer.Argument(..., help="Dataset name (a-z 0-9 _ -), e.g. clinics."),
    file: Path = typer.Option(..., "--file", "-f", help="Your CSV or Parquet file."),
    label: str = typer.Option("label", "--label", help="The integer label column."),
    client_column: str | None = typer.Option(
        None, "--client-column", help="Natural client id column (one client per value)."
    ),
    copy: bool = typer.Option(False, "--copy", help="Copy the file instead of symlinking."),
    select: bool = typer.Option(True, help="Also select it (data.dataset, natural clients)."),
    params: Path = ParamsOpt,
) -> None:
    """Register your own dataset under `datasets` in params.yaml and put the file (a symlink
    by default) under data/raw/, which the prepare stage depends on: editing the file reruns
    `dvc repro`. The campaign and registered model are named after it unless set."""
    from fl_core.data.registry import DatasetRegistrationError, register_dataset

    try:
        out = register_dataset(
            params,
            name=name,
            file=file,
            label_column=label,
            client_column=client_column,
            copy=copy,
            select=select,
            root=Path("."),
        )
    except DatasetRegistrationError as exc:
        typer.echo(f"init-dataset failed: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"registered dataset {name}: {out['path']} ({out['how']}), label {label!r}"
        + (f", clients from {client_column!r}" if client_column else "")
    )
    if select:
        typer.echo(
            f"selected it: data.dataset={name}; campaign {out['campaign_name']}, registered "
            f"model {out['registered_model']}. Next: fl check, then dvc repro"
        )


@app.command()
def prepare(params: Path = ParamsOpt) -> None:
    """Stage 1: load the dataset and hold out the global test set."""
    cfg = _setup(params)
    try:
        meta = stages.prepare(cfg, _paths())
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"prepare failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"prepared {meta['dataset']}: {meta['num_train']} train / {meta['num_test']} test")


@app.command()
def partition(params: Path = ParamsOpt) -> None:
    """Stage 2: one DVC-tracked file per client, with content hashes."""
    cfg = _setup(params)
    try:
        manifest = stages.partition(cfg, _paths())
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"partition failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"partitioned into {manifest['num_clients']} clients ({manifest['scheme']})")


@app.command()
def validate(params: Path = ParamsOpt) -> None:
    """Stage 3: Great Expectations suite over every partition and the test set."""
    cfg = _setup(params)
    report = stages.validate(cfg, _paths())
    typer.echo(report.format())
    if not report.success:
        raise typer.Exit(1)


@app.command()
def train(params: Path = ParamsOpt, progress: bool = True) -> None:
    """Stage 4: run the federated campaign (tracked in MLflow, model registered)."""
    cfg = _setup(params)
    out = stages.train(cfg, _paths(), progress=progress)
    typer.echo(
        f"campaign {out['campaign_id']}: {out['rounds']} rounds, final accuracy "
        f"{out['final_accuracy']:.4f} ({out['stop_reason']})"
    )


@app.command()
def evaluate(params: Path = ParamsOpt) -> None:
    """Stage 5: final metrics against a centralized baseline; plots."""
    cfg = _setup(params)
    out = stages.evaluate(cfg, _paths())
    typer.echo(
        f"federated {out['federated_test_accuracy']:.4f} vs centralized "
        f"{out['baseline_test_accuracy']:.4f}"
    )


@app.command()
def summary() -> None:
    """Print the last experiment's summary."""
    try:
        typer.echo(stages.summary(_paths()))
    except FileNotFoundError as exc:
        typer.echo(f"no finished experiment yet ({exc.filename}); run `make run`", err=True)
        raise typer.Exit(1) from None


if __name__ == "__main__":  # pragma: no cover
    app()
