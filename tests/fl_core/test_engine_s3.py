"""A campaign whose round state lives in S3 (the production artifact store).

Service: a real S3 endpoint, ``moto_server`` started on 127.0.0.1 by ``tests/s3.py``.
"""

from pathlib import Path

from fl_core import pipeline
from fl_core.engine import run_campaign
from fl_core.store import LocalStore, S3Store
from tests.conftest import tiny_config
from tests.s3 import s3_client, s3_endpoint  # noqa: F401  (s3_endpoint: fixture)


def test_campaign_on_s3_matches_the_local_store(
    tiny_data: Path,
    tmp_path: Path,
    s3_endpoint: str,  # noqa: F811
) -> None:
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="fl-artifacts")
    s3 = S3Store("fl-artifacts", "prod", client=client)
    cfg = tiny_config(communication={"uplink_codec": "topk:0.2+q8"})

    on_s3 = run_campaign(cfg, data_dir=tiny_data, store=s3, progress=False, campaign_id="c")
    local = run_campaign(
        cfg, data_dir=tiny_data, store=LocalStore(tmp_path), progress=False, campaign_id="c"
    )

    assert on_s3.model_sha256 == local.model_sha256
    keys = {
        o["Key"] for o in client.list_objects_v2(Bucket="fl-artifacts", Prefix="prod/")["Contents"]
    }
    assert f"prod/{pipeline.model_key('c', 3)}" in keys
    assert f"prod/{pipeline.campaign_key('c', 'campaign.json')}" in keys
    assert sum(k.startswith("prod/campaigns/c/clients/") for k in keys) > 0  # client states
    assert s3.uri(pipeline.model_key("c", 3)).startswith("s3://fl-artifacts/prod/")
