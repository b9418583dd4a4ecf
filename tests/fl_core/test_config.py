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


# --------------------------------------------------------------- datasets, names, campaign ids


def _cancer(**data: object) -> dict:
    return {
        "datasets": {
            "cancer": {
                "path": "data/raw/cancer.csv",
                "label_column": "diagnosis",
                "client_column": "site",
            }
        },
        "data": {"dataset": "cancer", **data},
        "partition": {"scheme": "natural"},
    }


def test_registered_dataset_names_the_campaign_and_the_registered_model() -> None:
    from fl_core.config import data_source, scaling_enabled

    cfg = from_dict(_cancer())

    assert cfg.campaign.name == "cancer-mlp"
    assert cfg.tracking.registered_model == "fl-cancer-mlp"
    src = data_source(cfg)
    assert (src.loader, src.path, src.client_column) == ("file", "data/raw/cancer.csv", "site")
    assert scaling_enabled(cfg) is True


def test_default_names_and_image_data_stay_unscaled() -> None:
    from fl_core.config import scaling_enabled

    cfg = load_params(REPO / "params.yaml")

    assert cfg.campaign.name == "mnist5k-mlp"
    assert cfg.tracking.registered_model == "fl-mnist5k-mlp"
    assert scaling_enabled(cfg) is False
    synthetic = from_dict({"data": {"dataset": "synthetic"}})
    assert scaling_enabled(synthetic) is False  # published benchmark, left as generated
    assert scaling_enabled(with_overrides(synthetic, {"data.scaling": "standard"})) is True


def test_derived_names_follow_a_dataset_override_explicit_names_stay() -> None:
    derived = with_overrides(
        from_dict(_cancer()), {"data.dataset": "digits", "partition.scheme": "iid"}
    )
    explicit = from_dict(
        {**_cancer(), "campaign": {"name": "mine"}, "tracking": {"registered_model": "fl-mine"}}
    )

    assert derived.tracking.registered_model == "fl-digits-mlp"
    assert with_overrides(explicit, {"model.name": "logreg"}).campaign.name == "mine"
    assert with_overrides(explicit, {"model.name": "logreg"}).tracking.registered_model == "fl-mine"


def test_unknown_dataset_lists_builtins_and_registered_ones() -> None:
    with pytest.raises(ConfigError) as err:
        from_dict({**_cancer(), "data": {"dataset": "cancr"}})

    assert "data.dataset" in str(err.value) and "'cancer'" in str(err.value)
    assert "'mnist5k'" in str(err.value)


def test_registered_dataset_cannot_shadow_a_builtin() -> None:
    with pytest.raises(ConfigError, match=r"datasets\.digits"):
        from_dict({"datasets": {"digits": {"path": "x.csv"}}})


def test_natural_partition_needs_the_registered_client_column() -> None:
    raw = _cancer()
    raw["datasets"]["cancer"]["client_column"] = None
    with pytest.raises(ConfigError, match=r"datasets\.cancer\.client_column"):
        from_dict(raw)


@pytest.mark.parametrize("cid", ["a/clients/client_0000", "x" * 300, "../up", ".hidden", ""])
def test_unsafe_campaign_ids_are_rejected(cid: str) -> None:
    from fl_core.config import validate_campaign_id

    with pytest.raises(ConfigError, match="campaign_id"):
        validate_campaign_id(cid)


def test_campaign_id_pattern_is_usable_as_json_schema_pattern() -> None:
    import re

    from fl_core.config import CAMPAIGN_ID_MAX_LENGTH, CAMPAIGN_ID_PATTERN, validate_campaign_id

    good = "cancer-mlp-20261202T075500-abc123"
    assert validate_campaign_id(good) == good
    assert re.search(CAMPAIGN_ID_PATTERN, "a" * CAMPAIGN_ID_MAX_LENGTH)
    assert not re.search(CAMPAIGN_ID_PATTERN, "a" * (CAMPAIGN_ID_MAX_LENGTH + 1))


def test_campaign_name_with_a_slash_fails_in_the_config() -> None:
    with pytest.raises(ConfigError, match=r"campaign\.name"):
        from_dict({"campaign": {"name": "a/b"}})


def test_unknown_conf_keys_are_named_with_the_allowed_ones() -> None:
    from fl_core.config import validate_conf_keys

    validate_conf_keys({"rounds": 3}, ["rounds", "model"])
    with pytest.raises(ConfigError) as err:
        validate_conf_keys({"roundz": 3, "rounds": 1}, ["rounds", "model"])

    assert "roundz" in str(err.value) and "allowed keys: model, rounds" in str(err.value)
