"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from fastapi import APIRouter

from chaser_auth.api.deps import RuntimeDep
from chaser_auth.api.schemas import ErrorResponse, HealthResponse
from chaser_auth.errors import ServiceUnavailable

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    operation_id="healthz",
    summary="The process is alive",
    response_model=HealthResponse,
)
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    operation_id="readyz",
    summary="The database answers",
    response_model=HealthResponse,
    responses={503: {"model": ErrorResponse, "description": "Database unreachable"}},
)
async def readyz(runtime: RuntimeDep) -> HealthResponse:
    try:
        await runtime.store.ping()
    except Exception as exc:  # noqa: BLE001 - any failure to answer means "not ready"
        raise ServiceUnavailable(headers={"Retry-After": "5"}) from exc
    return HealthResponse(status="ready")
