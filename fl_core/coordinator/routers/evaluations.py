"""``POST /v1/evaluations/{campaign}/{round}``: a client's evaluation of a global model on
its local held-out split (federated evaluation); only for a round it has a task in."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request, Response

from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.deps import authenticated, get_coordinator, in_thread
from fl_core.coordinator.routers._body import parse
from fl_core.coordinator.schemas import CAMPAIGN_PATTERN, MAX_ROUND, EvaluationIn

router = APIRouter(prefix="/evaluations", tags=["evaluations"])


@router.post("/{campaign}/{rnd}", status_code=204, response_class=Response)
async def report_evaluation(
    request: Request,
    campaign: str = Path(pattern=CAMPAIGN_PATTERN),
    rnd: int = Path(ge=1, le=MAX_ROUND),
    client_id: str = Depends(authenticated),
    coord: Coordinator = Depends(get_coordinator),
) -> Response:
    body = await parse(request, EvaluationIn)
    await in_thread(
        coord.record_evaluation,
        client_id,
        campaign,
        rnd,
        model_version=body.model_version,
        num_examples=body.num_examples,
        metrics=body.metrics,
    )
    return Response(status_code=204)
