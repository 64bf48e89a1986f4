"""The API under /v1/ (SPEC.md, "HTTP service"), calling what the CLI calls: the producer,
`fpcancel.bulk`, `fpcancel.ops`, `fpcancel.queries`, `fpcancel.stats`.

Answers are JSON with the `--json` shapes: a job is the `jobs list --json` object (`jobs show
--json` with its `calls` for GET /v1/jobs/{id}); lists are JSON arrays, and a full page of jobs
says where the next begins in a `Link: <...>; rel="next"` header (`before=` the last id: keyset
paging).
"""

import json
import tempfile
from datetime import datetime
from typing import IO, Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError
from starlette.concurrency import run_in_threadpool

from fpcancel import events, ops
from fpcancel.bulk import BulkInputError, BulkResult, check_csv, validate_rows
from fpcancel.errors import JobStateError, ValidationError
from fpcancel.queries import get_job, job_dict, job_with_calls, list_jobs, new_job_dict
from fpcancel.stats import collect_stats
from fpcancel.statuses import ApiScope, JobStatus, Lane
from fpcancel.validation import clean_lane, clean_note, clean_order_uuid, clean_source
from fpcancel.web.auth import authorize, require, services_of
from fpcancel.web.errors import ApiError, bulk_error
from fpcancel.web.keys import KeyInfo
from fpcancel.web.middleware import JSON_BULK_MAX_BYTES, too_large

router = APIRouter(prefix="/v1")

BIGINT_MAX = 2**63 - 1
SPOOL_IN_MEMORY_BYTES = 1024 * 1024
JOBS_PAGE_MAX = 1000
EVENTS_PAGE_MAX = 1000
STATUSES = tuple(s.value for s in JobStatus)

Enqueuer = Annotated[KeyInfo, Depends(require(ApiScope.ENQUEUE))]
Reader = Annotated[KeyInfo, Depends(require(ApiScope.READ))]
Operator = Annotated[KeyInfo, Depends(require(ApiScope.OPS))]


def _checked(clean: Any, value: Any) -> Any:
    """fpcancel's validator inside a pydantic one: its reason becomes the field's."""
    try:
        return clean(value)
    except ValidationError as exc:
        raise ValueError(exc.reason) from None


class CancellationIn(BaseModel):
    """One cancellation (SPEC.md, "Inputs")."""

    model_config = ConfigDict(extra="forbid")
    order_uuid: str = Field(description="Front Payment's order id: 1-64 of A-Z a-z 0-9 _ -")
    note: str = Field(description="1-1,000 characters, trimmed")
    source: str | None = Field(None, description="1-64 of A-Z a-z 0-9 _ - . :")
    lane: str = Field(Lane.LIVE.value, description="live (customers, first) or bulk")

    _order = field_validator("order_uuid")(lambda v: _checked(clean_order_uuid, v))
    _note = field_validator("note")(lambda v: _checked(clean_note, v))
    _source = field_validator("source")(lambda v: _checked(clean_source, v))
    _lane = field_validator("lane")(lambda v: _checked(clean_lane, v))


class JobOut(BaseModel):
    """A job: the `cancel_jobs` columns (`jobs list --json`); `created` on POST answers only."""

    id: int
    order_uuid: str
    note: str
    source: str | None
    lane: str
    status: str
    attempts: int
    next_attempt_at: str | None
    last_http_status: int | None
    last_message: str | None
    last_errors: Any
    created_at: str
    updated_at: str
    finished_at: str | None
    created: bool | None = None


class CallOut(BaseModel):
    """One call to the provider (a `cancel_attempts` row)."""

    id: int
    job_id: int
    number: int
    kind: str
    started_at: str
    finished_at: str
    duration_ms: int
    http_status: int | None
    outcome: str
    message: str | None
    response_body: str | None
    counted: bool
    retry_in_ms: int | None


class JobWithCalls(JobOut):
    calls: list[CallOut]


class BulkRowIn(BaseModel):
    order_uuid: str
    note: str


class BulkIn(BaseModel):
    """JSON rows; `text/csv` is taken too (a header naming order_uuid and optionally note)."""

    rows: list[BulkRowIn]
    source: str | None = None
    lane: str = Lane.BULK.value


class BulkOut(BaseModel):
    created: int
    already_active: int
    invalid: int
    duplicates: int


class ErrorOut(BaseModel):
    error: str
    details: list[dict[str, Any]]


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {
        401: "no key, or an unknown or revoked one",
        403: "the key's scope does not allow this",
        422: "bad input, every bad field or row named; nothing was written",
    }.items()
}


def job_id_of(raw: str) -> int:
    """A job id from the path: 1 to 2^63-1 (the column is BIGINT), else 422 naming `id`."""
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= BIGINT_MAX:
        raise ApiError(
            422,
            "id: must be a whole number from 1 to 9223372036854775807",
            [{"field": "id", "reason": "must be a whole number from 1 to 9223372036854775807"}],
        )
    return int(raw)


def _job_answer(data: dict[str, Any], status: int = 200, **extra: Any) -> JSONResponse:
    return JSONResponse({**data, **extra}, status_code=status)


@router.post(
    "/cancellations",
    status_code=201,
    responses={
        201: {"model": JobOut},
        200: {"model": JobOut, "description": "the order's existing job"},
        **ERRORS,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": CancellationIn.model_json_schema()}},
        }
    },
    summary="Enqueue one cancellation (201 created, 200 the order's active job)",
)
async def create_cancellation(request: Request) -> JSONResponse:
    # The hot path: the key, the body, the job and its read in one trip to the thread pool
    # (a sync dependency would cost a second), the key checked before the body is judged.
    raw = await request.body()
    services = services_of(request)

    def enqueue() -> JSONResponse:
        authorize(request, ApiScope.ENQUEUE)
        try:
            body = CancellationIn.model_validate_json(raw)
        except PydanticValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
            ) from None
        job = services.producer.enqueue(body.order_uuid, body.note, body.source, body.lane)
        if job.values is not None:  # new: the job as written, no second trip to the database
            data = new_job_dict(job.id, job.values)
        else:
            with services.sessions() as session:
                data = job_dict(get_job(session, job.id))
        return _job_answer(data, 201 if job.created else 200, created=job.created)

    return await run_in_threadpool(enqueue)


# -- bulk ------------------------------------------------------------------------------------


async def spool_body(request: Request, limit: int | None = None) -> IO[bytes]:
    """The request body in a temporary file (in memory up to 1 MiB, then on disk), read as it
    arrives: a big stock-out never sits in memory whole."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)  # noqa: SIM115
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if limit is not None and size > limit:
            spool.close()
            raise too_large(limit)
        spool.write(chunk)
    spool.seek(0)
    return spool


def _bulk_params(
    source: str | None, lane: str | None, note: str | None
) -> tuple[str | None, str, str | None]:
    problems: list[dict[str, str]] = []
    cleaned: dict[str, Any] = {}
    for name, clean, value in (
        ("source", clean_source, source),
        ("lane", clean_lane, lane or Lane.BULK.value),
        ("note", lambda v: None if v is None else clean_note(v), note),
    ):
        try:
            cleaned[name] = clean(value)
        except ValidationError as exc:
            problems.append({"field": name, "reason": exc.reason})
    if problems:
        raise ApiError(422, "invalid request; nothing was written", problems)
    return cleaned["source"], cleaned["lane"], cleaned["note"]


def _json_rows(spool: IO[bytes]) -> tuple[list[Any], Any, Any]:
    try:
        doc = json.load(spool)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(
            422, "the body is not valid JSON", [{"field": "body", "reason": "is not valid JSON"}]
        ) from None
    if not isinstance(doc, dict):
        raise ApiError(
            422,
            "the body must be a JSON object",
            [{"field": "body", "reason": 'must be {"rows": [...]}'}],
        )
    unknown = sorted(set(doc) - {"rows", "source", "lane"})
    if unknown:
        raise ApiError(
            422,
            "invalid request; nothing was written",
            [{"field": n, "reason": "is not a field of this request"} for n in unknown],
        )
    rows = doc.get("rows")
    if not isinstance(rows, list):
        raise ApiError(
            422,
            "rows: must be a list",
            [{"field": "rows", "reason": "must be a list of {order_uuid, note}"}],
        )
    return rows, doc.get("source"), doc.get("lane")


def _row_pairs(rows: list[Any]) -> list[tuple[Any, Any]]:
    """JSON objects as (order_uuid, note); a row that is not an object names itself."""
    pairs: list[tuple[Any, Any]] = []
    for row in rows:
        if isinstance(row, dict) and set(row) <= {"order_uuid", "note"}:
            pairs.append((row.get("order_uuid"), row.get("note")))
        else:
            pairs.append(None)  # type: ignore[arg-type]  # validate_rows names it
    return pairs


@router.post(
    "/cancellations/bulk",
    responses={
        200: {"model": BulkOut},
        413: {"model": ErrorOut, "description": "body too large"},
        415: {"model": ErrorOut},
        **ERRORS,
    },
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": BulkIn.model_json_schema()},
                "text/csv": {
                    "schema": {
                        "type": "string",
                        "description": "a header naming order_uuid and optionally note, then "
                        "one order a line; ?note= fills empty notes, ?source= and ?lane= apply "
                        "to every line",
                    }
                },
            }
        }
    },
    summary="Enqueue many cancellations, all or nothing (CSV or JSON rows)",
)
async def create_bulk(
    request: Request,
    key: Enqueuer,
    source: Annotated[str | None, Query(description="CSV: a source for every job")] = None,
    lane: Annotated[str | None, Query(description="CSV: live or bulk (default bulk)")] = None,
    note: Annotated[str | None, Query(description="CSV: the note of lines without one")] = None,
) -> JSONResponse:
    services = services_of(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("text/csv", "application/json"):
        raise ApiError(
            415,
            "send text/csv or application/json",
            [
                {
                    "field": "content-type",
                    "reason": f"{kind or 'none'} is not text/csv or application/json",
                }
            ],
        )
    if kind == "text/csv":
        src, ln, default_note = _bulk_params(source, lane, note)
        spool = await spool_body(request)

        def write_csv() -> BulkResult:
            try:
                checked = check_csv(spool, default_note)
                return services.producer.enqueue_bulk(checked.rows(), src, ln)
            finally:
                spool.close()

        try:
            result = await run_in_threadpool(write_csv)
        except BulkInputError as exc:
            raise bulk_error(exc, "line") from None
        return JSONResponse(result.as_json())

    spool = await spool_body(request, JSON_BULK_MAX_BYTES)

    def write_json() -> BulkResult:
        try:
            rows, body_source, body_lane = _json_rows(spool)
        finally:
            spool.close()
        src, ln, _ = _bulk_params(body_source, body_lane, None)
        try:
            valid = validate_rows(_row_pairs(rows))
        except BulkInputError as exc:
            raise bulk_error(exc, "row") from None
        return services.producer.enqueue_bulk(valid, src, ln)

    result = await run_in_threadpool(write_json)
    return JSONResponse(result.as_json())


# -- reads -----------------------------------------------------------------------------------


def _time(value: str | None, name: str) -> datetime | None:
    from fpcancel.cli.context import parse_time

    try:
        return parse_time(value, name)
    except Exception:
        raise ApiError(
            422,
            f"{name}: not an ISO 8601 time",
            [{"field": name, "reason": "must be an ISO 8601 time, e.g. 2026-11-27T08:00:00Z"}],
        ) from None


def _statuses(values: list[str]) -> tuple[str, ...]:
    found = tuple(
        dict.fromkeys(v.strip() for value in values for v in value.split(",") if v.strip())
    )
    bad = [s for s in found if s not in STATUSES]
    if bad:
        raise ApiError(
            422,
            f"status: {bad[0]!r} is not a job status",
            [
                {"field": "status", "reason": f"{s!r} is not one of {', '.join(STATUSES)}"}
                for s in bad
            ],
        )
    return found


@router.get(
    "/jobs",
    responses={200: {"model": list[JobOut]}, **ERRORS},
    summary="Jobs, newest first; filter as `jobs list` does",
)
def get_jobs(
    request: Request,
    key: Reader,
    status: Annotated[list[str], Query(description="repeatable, or comma-separated")] = [],  # noqa: B006
    order: Annotated[str | None, Query(description="only this order's jobs")] = None,
    source: str | None = None,
    since: Annotated[str | None, Query(description="created at or after (ISO 8601)")] = None,
    until: Annotated[str | None, Query(description="created before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=JOBS_PAGE_MAX)] = 50,
    before: Annotated[
        int | None,
        Query(ge=1, le=BIGINT_MAX, description="jobs older than this id (the next page)"),
    ] = None,
) -> JSONResponse:
    statuses = _statuses(status)
    problems = []
    for name, clean, value in (
        ("order", clean_order_uuid, order),
        ("source", clean_source, source),
    ):
        if value is not None:
            try:
                clean(value)
            except ValidationError as exc:
                problems.append({"field": name, "reason": exc.reason})
    if problems:
        raise ApiError(422, "invalid request", problems)
    since_at, until_at = _time(since, "since"), _time(until, "until")
    with services_of(request).sessions() as session:
        rows = list_jobs(
            session,
            statuses=statuses,
            order_uuid=order,
            source=source,
            since=since_at,
            until=until_at,
            limit=limit,
            before_id=before,
        )
    headers = {}
    if len(rows) == limit:
        nxt = request.url.include_query_params(before=rows[-1]["id"])
        headers["Link"] = f'<{nxt}>; rel="next"'
    return JSONResponse(rows, headers=headers)


@router.get(
    "/jobs/{id}",
    responses={200: {"model": JobWithCalls}, 404: {"model": ErrorOut}, **ERRORS},
    summary="One job with every call it made (`jobs show --json`)",
)
def get_one_job(id: str, request: Request, key: Reader) -> JSONResponse:
    job_id = job_id_of(id)
    with services_of(request).sessions() as session:
        return JSONResponse(job_with_calls(session, job_id))


@router.post(
    "/jobs/{id}/retry",
    responses={
        200: {"model": JobOut},
        404: {"model": ErrorOut},
        409: {
            "model": ErrorOut,
            "description": "not dead or failed, or its order has another active job",
        },
        **ERRORS,
    },
    summary="Send a dead or failed job round again (ops)",
)
def retry_job(id: str, request: Request, key: Operator) -> JSONResponse:
    job_id = job_id_of(id)
    services = services_of(request)
    result = ops.retry_jobs(services.sessions, [job_id], services.clock)
    if result.skipped:
        reason = result.skipped[0].reason
        raise JobStateError(f"job {job_id}: {reason}")
    with services.sessions() as session:
        return JSONResponse(job_dict(get_job(session, job_id)))


@router.get(
    "/events",
    responses={
        200: {"description": "event payloads, oldest first (`events list --json`)"},
        **ERRORS,
    },
    summary="Outcome events after an id, oldest first (the webhook's payloads)",
)
def get_events(
    request: Request,
    key: Reader,
    after: Annotated[
        int, Query(ge=0, le=BIGINT_MAX, description="the last event id you handled")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=events.MAX_LIMIT)] = events.DEFAULT_LIMIT,
) -> JSONResponse:
    with services_of(request).sessions() as session:
        return JSONResponse(events.read_events(session, after, limit))


@router.get("/stats", summary="What `fpcancel stats --json` prints", responses=ERRORS)
def get_stats(
    request: Request,
    key: Reader,
    since: Annotated[
        str | None, Query(description="jobs created and calls made at or after")
    ] = None,
) -> JSONResponse:
    services = services_of(request)
    since_at = _time(since, "since")
    with services.sessions() as session:
        return JSONResponse(collect_stats(session, since_at, services.clock()))
