from pathlib import Path

import pytest

from fl_core.config import ConfigError, from_dict, load_params, with_overrides

REPO = Path(__file__).resolve().parents[2]


def test_repo_params_yaml_is_valid_and_typed() -> None:
    cfg = load_params(REPO / "params.yaml")

    assert cfg.partition.scheme == "dirichlet"
    assert isinstance(cfg.model.hidden, tuple)
    assert cfg.flat()["campaign.rounds"] == cfg.campaign.rounds


def test_unknown_key_names_the_key_and_the_allowed_keys() -> None:
    with pytest.raises(ConfigError) as err:
        from_dict({"client": {"learning_rate": 0.1}})

    msg = str(err.value)
    assert "client.learning_rate" in msg
    assert "local_epochs" in msg and "lr" in msg


def test_unknown_section_is_rejected() -> None:
    with pytest.raises(ConfigError, match="trainer: unknown key"):
        from_dict({"trainer": {}})


def test_value_outside_allowed_set_names_allowed_values() -> None:
    with pytest.raises(ConfigError) as err:
        from_dict({"partition": {"scheme": "by_label"}})

    assert "partition.scheme" in str(err.value)
    assert "'dirichlet'" in str(err.value) and "'shards'" in str(err.value)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"campaign": {"rounds": 0}}, "campaign.rounds"),
        ({"campaign": {"rounds": "ten"}}, "campaign.rounds"),
        ({"client": {"lr": -1}}, "client.lr"),
        ({"partition": {"alpha": 0}}, "partition.alpha"),
        ({"data": {"test_fraction": 1.5}}, "data.test_fraction"),
        ({"model": {"hidden": [0]}}, "model.hidden"),
        ({"campaign": {"clients_per_round": 50}}, "campaign.clients_per_round"),
        ({"data": {"dataset": "file"}}, "data.path"),
        ({"model": {"name": "cnn"}, "data": {"dataset": "synthetic"}}, "model.name"),
    ],
)
def test_bad_values_name_their_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(raw)


def test_bad_params_file_fails_before_any_work(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("campaign:\n  rounds: 3\n  colour: blue\n")

    with pytest.raises(ConfigError, match="campaign.colour"):
        load_params(params)


def test_overrides_are_validated() -> None:
    cfg = from_dict({})

    assert with_overrides(cfg, {"campaign.rounds": 5}).campaign.rounds == 5
    with pytest.raises(ConfigError, match="campaign.rounds"):
        with_overrides(cfg, {"campaign.rounds": -5})
