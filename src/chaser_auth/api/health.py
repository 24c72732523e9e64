"""Liveness, readiness and metrics, for load balancers, orchestrators and Prometheus.

`router` (liveness, readiness) is served on both listeners; `metrics_router` only on the
operator listener (`api/operator.py`): the counters tell whether addresses have accounts."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from chaser_auth import metrics
from chaser_auth.api.deps import RuntimeDep
from chaser_auth.api.schemas import ErrorResponse, HealthResponse
from chaser_auth.errors import ServiceUnavailable

router = APIRouter(tags=["operations"])
metrics_router = APIRouter()


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
    except Exception as exc:  # any failure to answer means "not ready"
        raise ServiceUnavailable(headers={"Retry-After": "5"}) from exc
    return HealthResponse(status="ready")


@metrics_router.get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Metrics"},
        503: {"model": ErrorResponse, "description": "Database unreachable"},
    },
)
async def prometheus_metrics(runtime: RuntimeDep) -> Response:
    depth, oldest, dead = await runtime.housekeeping.outbox_stats()
    body = metrics.render(depth, oldest, dead, runtime.clock())
    return Response(body, media_type=CONTENT_TYPE_LATEST)
