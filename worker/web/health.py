"""`GET /healthz`, without auth: 200 when the database and the broker answer, else 503."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from fpcancel.web.auth import services_of

router = APIRouter()


@router.get(
    "/healthz",
    summary="200 when the database and the broker answer, 503 otherwise (no auth)",
    responses={503: {"description": "the database or the broker does not answer"}},
)
async def healthz(request: Request) -> JSONResponse:
    services = services_of(request)
    database = await run_in_threadpool(services.database_ok)
    broker = await run_in_threadpool(services.broker_ok)
    body = {
        "database": "ok" if database else "unreachable",
        "broker": "ok" if broker else "unreachable",
    }
    if database and broker:
        return JSONResponse({"status": "ok", **body})
    failing = [name for name, ok in (("database", database), ("broker", broker)) if not ok]
    return JSONResponse(
        {
            "error": f"{' and '.join(failing)} unreachable",
            "details": [{"field": name, "reason": "does not answer"} for name in failing],
            **body,
        },
        status_code=503,
    )
