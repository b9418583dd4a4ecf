"""Parse a request body the authentication dependency already read and capped."""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from fl_core.coordinator.registry import ProtocolError

M = TypeVar("M", bound=BaseModel)


async def parse(request: Request, model: type[M]) -> M:
    """``model`` from the JSON body; 400 with the pydantic reason when it does not fit."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ProtocolError(400, f"malformed {model.__name__}: {reasons}") from None
