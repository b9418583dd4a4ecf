"""Federated monitoring reports, signed like every request; counts only, never rows.

``POST /v1/histograms/{campaign}/{round}``: the bin counts of the client's training data on
the grid its training task carried (the campaign's reference histograms).
``POST /v1/monitoring/{campaign}/{round}``: the client's check of the champion on its fresh
local data (accuracy, example count, counts in the check's bin edges).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request, Response

from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.deps import authenticated, get_coordinator, in_thread
from fl_core.coordinator.routers._body import parse
from fl_core.coordinator.schemas import CAMPAIGN_PATTERN, MAX_ROUND, HistogramIn, MonitoringIn

router = APIRouter(tags=["monitoring"])


@router.post("/histograms/{campaign}/{rnd}", status_code=204, response_class=Response)
async def report_histogram(
    request: Request,
    campaign: str = Path(pattern=CAMPAIGN_PATTERN),
    rnd: int = Path(ge=1, le=MAX_ROUND),
    client_id: str = Depends(authenticated),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    body = await parse(request, HistogramIn)
    await in_thread(
        coord.record_histogram,
        client_id,
        campaign,
        rnd,
        num_examples=body.num_examples,
        counts=body.counts,
    )
    return Response(status_code=204)


@router.post("/monitoring/{campaign}/{rnd}", status_code=204, response_class=Response)
async def report_monitoring(
    request: Request,
    campaign: str = Path(pattern=CAMPAIGN_PATTERN),
    rnd: int = Path(ge=1, le=MAX_ROUND),
    client_id: str = Depends(authenticated),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    body = await parse(request, MonitoringIn)
    await in_thread(
        coord.record_monitoring_report,
        client_id,
        campaign,
        rnd,
        model_version=body.model_version,
        num_examples=body.num_examples,
        data_valid=body.data_valid,
        metrics=body.metrics,
        counts=body.counts,
    )
    return Response(status_code=204)
