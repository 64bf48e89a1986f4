"""The ops dashboard at `/`: server-rendered pages (Jinja2, autoescaped), no script at all.

    /signin, /signout          sign in with an ops key; a signed, HttpOnly, SameSite=Strict cookie
    /                          overview: jobs by status, outcomes per hour, calls per minute
                               against the rate limit, latency, the fleet's pause and why
    /jobs                      the jobs table: `jobs list`'s filters, keyset paging
    /jobs/{id}                 a job: its calls, events and webhook deliveries; retry
    /jobs/{id}/retry           confirm, then send a dead or failed job round again
    /retry                     confirm, then send every dead/failed job a filter matches
    /upload                    a CSV of orders, all or nothing, bad lines listed
    /events                    outcome events and where their webhook delivery stands

Every form that changes something is a POST carrying the session's CSRF token; the filter forms
are GETs that change nothing and carry none (a token in a URL would leak into logs).
"""

import hmac
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from fpcancel import ops
from fpcancel.bulk import BulkInputError, check_csv
from fpcancel.errors import BadInput, ValidationError
from fpcancel.queries import get_job, job_with_calls, list_jobs
from fpcancel.statuses import LANES, RETRYABLE_BY_OPS, ApiScope, JobStatus, Lane
from fpcancel.validation import clean_lane, clean_note, clean_order_uuid, clean_source
from fpcancel.web import charts, pages
from fpcancel.web.auth import (
    CSRF_FIELD,
    SESSION_COOKIE,
    SESSION_SECONDS,
    SIGNIN_COOKIE,
    SIGNIN_SECONDS,
    DashboardUser,
    KeyChecker,
    check_csrf,
    dashboard_user,
    is_https,
    services_of,
    session_cookie,
    signin_nonce,
    signin_token,
)
from fpcancel.web.errors import ApiError
from fpcancel.web.middleware import BULK_MAX_BYTES

router = APIRouter(include_in_schema=False)
User = Annotated[DashboardUser, Depends(dashboard_user)]

BIGINT_MAX = 2**63 - 1
STATUSES = [s.value for s in JobStatus]
RETRYABLE = [s.value for s in RETRYABLE_BY_OPS]
PAGE_SIZES = (25, 50, 100, 200, 500)
SHOWN_SKIPPED = 20


def render(
    request: Request, template: str, user: DashboardUser | None, status: int = 200, **context: Any
) -> HTMLResponse:
    services = services_of(request)
    env = request.app.state.templates
    html = env.get_template(template).render(
        user=user,
        csrf=user.csrf_token(services.secret) if user else "",
        csrf_field=CSRF_FIELD,
        path=request.url.path,
        statuses=STATUSES,
        retryable=RETRYABLE,
        lanes=LANES,
        **context,
    )
    return HTMLResponse(html, status_code=status)


def _safe_next(value: str | None) -> str:
    """Only a path on this site: `/jobs?x`, never `//evil.example` or `https://...`."""
    if value and value.startswith("/") and not value.startswith(("//", "/\\")):
        return value
    return "/"


def _form_text(form: Any, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


# -- sign in and out -------------------------------------------------------------------------


@router.get("/signin")
def signin_page(request: Request, next: str | None = None, message: str | None = None) -> Response:
    return _signin_form(request, _safe_next(next), message)


def _signin_form(
    request: Request, next_path: str, message: str | None, status: int = 200
) -> Response:
    """The sign-in page with a fresh CSRF nonce in its own short-lived cookie."""
    nonce = signin_nonce()
    response = render(
        request,
        "signin.html",
        None,
        status=status,
        token=signin_token(services_of(request).secret, nonce),
        next=next_path,
        message=message,
    )
    response.set_cookie(
        SIGNIN_COOKIE,
        nonce,
        max_age=SIGNIN_SECONDS,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
        path="/signin",
    )
    return response


@router.post("/signin")
async def signin(request: Request) -> Response:
    services = services_of(request)
    form = await request.form()
    next_path = _safe_next(_form_text(form, "next"))
    nonce = request.cookies.get(SIGNIN_COOKIE, "")
    token = _form_text(form, CSRF_FIELD) or ""
    if not nonce or not hmac.compare_digest(token, signin_token(services.secret, nonce)):
        raise ApiError(
            403,
            "the sign-in form's CSRF token is missing, wrong or expired; reload the page",
            [{"field": CSRF_FIELD, "reason": "missing or wrong"}],
        )
    presented = (_form_text(form, "key") or "").strip()
    checker: KeyChecker = request.app.state.key_checker
    key = await run_in_threadpool(checker.find, presented) if presented else None
    if key is None:
        return _signin_form(request, next_path, "That key is unknown or revoked.", 401)
    request.state.key_name = key.name
    if not key.allows(ApiScope.OPS):
        message = f"Key {key.name} has scope {key.scope}; the dashboard needs an ops key."
        return _signin_form(request, next_path, message, 403)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_cookie(services.secret, key.id),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
        path="/",
    )
    response.delete_cookie(SIGNIN_COOKIE, path="/signin")
    return response


@router.post("/signout")
async def signout(request: Request, user: User) -> Response:
    form = await request.form()
    check_csrf(request, user, _form_text(form, CSRF_FIELD))
    response = RedirectResponse("/signin?message=signed-out", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


# -- overview --------------------------------------------------------------------------------


@router.get("/")
def overview_page(request: Request, user: User) -> Response:
    services = services_of(request)
    now = services.clock()
    pauses = None
    pause_error = None
    if services.pauses is not None:
        try:
            pauses = services.pauses.active_pauses()
        except Exception as exc:
            pause_error = f"cannot ask Redis ({type(exc).__name__})"
    with services.sessions() as session:
        data = pages.overview(session, now, services.settings.rate_limit, pauses)
    outcome_series = pages.TERMINAL_ORDER
    outcomes = charts.stacked_bars(
        "Jobs finished per hour, last 24 hours, by status",
        data.outcomes.starts(),
        [data.outcomes.counts.get(s, {}) for s in data.outcomes.starts()],
        outcome_series,
        label_every=3,
    )
    allowed = data.calls_per_minute_allowed
    calls = charts.stacked_bars(
        "Calls to the provider per minute, last hour, against the rate limit",
        data.calls.starts(),
        [data.calls.counts.get(s, {}) for s in data.calls.starts()],
        ["cancel", "status_check"],
        label_every=10,
        limit=allowed,
        limit_label=f"rate limit {allowed:,.0f}/min ({data.rate_limit})",
    )
    latency = charts.lines(
        "Call latency per 5 minutes, last hour (ms)",
        [start for start, _ in data.latency.per_bucket],
        [values for _, values in data.latency.per_bucket],
        ["p50", "p95"],
        unit=" ms",
    )
    return render(
        request,
        "overview.html",
        user,
        data=data,
        outcome_series=outcome_series,
        outcomes_chart=outcomes,
        calls_chart=calls,
        latency_chart=latency,
        pause_error=pause_error,
        no_redis=services.pauses is None,
    )


# -- jobs ------------------------------------------------------------------------------------


def _int_param(value: str | None, name: str, problems: list[str]) -> int | None:
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= BIGINT_MAX:
        problems.append(f"{name}: must be a whole number from 1 to {BIGINT_MAX}")
        return None
    return int(value)


def _time_param(value: str | None, name: str, problems: list[str]) -> datetime | None:
    if not value:
        return None
    from fpcancel.cli.context import parse_time

    try:
        return parse_time(value, name)
    except Exception:
        problems.append(f"{name}: not an ISO 8601 time (e.g. 2026-11-27T08:00:00Z)")
        return None


def _filters(request: Request) -> tuple[dict[str, Any], list[str]]:
    """The jobs table's filters from the query string, checked as `jobs list` checks them."""
    q = request.query_params
    problems: list[str] = []
    statuses = [s for s in q.getlist("status") if s]
    for s in statuses:
        if s not in STATUSES:
            problems.append(f"status: {s!r} is not a job status")
    order = (q.get("order") or "").strip() or None
    source = (q.get("source") or "").strip() or None
    for name, clean, value in (
        ("order", clean_order_uuid, order),
        ("source", clean_source, source),
    ):
        if value is not None:
            try:
                clean(value, name)
            except ValidationError as exc:
                problems.append(str(exc))
    limit = q.get("limit") or "50"
    if limit not in {str(n) for n in PAGE_SIZES}:
        problems.append(f"limit: one of {', '.join(map(str, PAGE_SIZES))}")
        limit = "50"
    since, until = (q.get("since") or "").strip() or None, (q.get("until") or "").strip() or None
    filters: dict[str, Any] = {
        "status": [s for s in statuses if s in STATUSES],
        "order": order,
        "source": source,
        "since": since,
        "until": until,
        "limit": int(limit),
        "before": _int_param(q.get("before"), "before", problems),
        "after": _int_param(q.get("after"), "after", problems),
    }
    filters["since_at"] = _time_param(since, "since", problems)
    filters["until_at"] = _time_param(until, "until", problems)
    return filters, problems


def _query(filters: dict[str, Any], **changes: Any) -> str:
    """The jobs page's query string for these filters (paging keys replaced by `changes`)."""
    keep = {k: filters[k] for k in ("status", "order", "source", "since", "until", "limit")}
    keep.update(changes)
    pairs: list[tuple[str, Any]] = []
    for name, value in keep.items():
        if isinstance(value, list):
            pairs += [(name, v) for v in value]
        elif value not in (None, ""):
            pairs.append((name, value))
    return urlencode(pairs)


@router.get("/jobs")
def jobs_page(request: Request, user: User) -> Response:
    filters, problems = _filters(request)
    rows: list[dict[str, Any]] = []
    if not problems:
        with services_of(request).sessions() as session:
            rows = list_jobs(
                session,
                statuses=tuple(filters["status"]),
                order_uuid=filters["order"],
                source=filters["source"],
                since=filters["since_at"],
                until=filters["until_at"],
                limit=filters["limit"],
                before_id=filters["before"],
                after_id=filters["after"],
            )
    paged = filters["before"] is not None or filters["after"] is not None
    older = (
        _query(filters, before=rows[-1]["id"])
        if rows and (len(rows) == filters["limit"] or filters["after"])
        else None
    )
    newer = _query(filters, after=rows[0]["id"]) if rows and paged else None
    retry_link = None
    if filters["status"] and set(filters["status"]) <= set(RETRYABLE) and not filters["order"]:
        retry_link = urlencode(
            [("status", s) for s in filters["status"]]
            + [(k, filters[k]) for k in ("source", "since") if filters[k]]
        )
    return render(
        request,
        "jobs.html",
        user,
        status=422 if problems else 200,
        rows=rows,
        filters=filters,
        problems=problems,
        page_sizes=PAGE_SIZES,
        older=older,
        newer=newer,
        newest=_query(filters) if paged else None,
        retry_link=retry_link,
    )


def _job_id(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= BIGINT_MAX:
        raise ApiError(
            422,
            f"id: must be a whole number from 1 to {BIGINT_MAX}",
            [{"field": "id", "reason": "not a job id"}],
        )
    return int(raw)


def _job_page(
    request: Request, user: DashboardUser, job_id: int, status: int = 200, **extra: Any
) -> HTMLResponse:
    with services_of(request).sessions() as session:
        job = job_with_calls(session, job_id)
    return render(request, "job.html", user, status=status, job=job, events=job["events"], **extra)


@router.get("/jobs/{id}")
def job_page(id: str, request: Request, user: User, done: str | None = None) -> Response:
    notice = (
        "Sent round again: the job is queued and a worker's scheduler will send it."
        if done == "retried"
        else None
    )
    return _job_page(request, user, _job_id(id), notice=notice)


@router.get("/jobs/{id}/retry")
def confirm_retry_job(id: str, request: Request, user: User) -> Response:
    job_id = _job_id(id)
    with services_of(request).sessions() as session:
        job = get_job(session, job_id)
        summary = {
            "id": job.id,
            "order_uuid": job.order_uuid,
            "status": job.status,
            "attempts": job.attempts,
            "last_message": job.last_message,
        }
    return render(
        request,
        "confirm_retry.html",
        user,
        status=200 if summary["status"] in RETRYABLE else 409,
        job=summary,
        max_attempts=services_of(request).settings.max_attempts,
    )


@router.post("/jobs/{id}/retry")
async def retry_job(id: str, request: Request, user: User) -> Response:
    job_id = _job_id(id)
    form = await request.form()
    check_csrf(request, user, _form_text(form, CSRF_FIELD))
    services = services_of(request)
    try:
        result = await run_in_threadpool(
            ops.retry_jobs, services.sessions, [job_id], services.clock
        )
    except BadInput as exc:
        return _job_page(request, user, job_id, status=409, problem=str(exc))
    if result.skipped:
        return _job_page(
            request,
            user,
            job_id,
            status=409,
            problem=f"Not sent round again: {result.skipped[0].reason}.",
        )
    return RedirectResponse(f"/jobs/{job_id}?done=retried", status_code=303)


# -- bulk retry by filter --------------------------------------------------------------------


def _selection(values: Any) -> tuple[ops.RetrySelection | None, dict[str, Any], list[str]]:
    problems: list[str] = []
    statuses = [s for s in values.getlist("status") if s]
    if not statuses:
        problems.append("status: choose dead, failed or both")
    for s in statuses:
        if s not in RETRYABLE:
            problems.append(f"status: {s!r}; only dead or failed jobs can be retried")
    source = (values.get("source") or "").strip() or None
    if source is not None:
        try:
            clean_source(source)
        except ValidationError as exc:
            problems.append(str(exc))
    since = (values.get("since") or "").strip() or None
    since_at = _time_param(since, "since", problems)
    shown = {"status": statuses, "source": source, "since": since}
    if problems:
        return None, shown, problems
    return ops.RetrySelection(tuple(dict.fromkeys(statuses)), source, since_at), shown, problems


@router.get("/retry")
def confirm_retry_matching(request: Request, user: User) -> Response:
    selection, shown, problems = _selection(request.query_params)
    count = None
    if selection is not None:
        with services_of(request).sessions() as session:
            count = ops.count_matching(session, selection)
    return render(
        request,
        "confirm_bulk_retry.html",
        user,
        status=422 if problems else 200,
        selection=shown,
        problems=problems,
        count=count,
        max_attempts=services_of(request).settings.max_attempts,
    )


@router.post("/retry")
async def retry_matching(request: Request, user: User) -> Response:
    form = await request.form()
    check_csrf(request, user, _form_text(form, CSRF_FIELD))
    selection, shown, problems = _selection(form)
    if selection is None:
        return render(
            request,
            "confirm_bulk_retry.html",
            user,
            status=422,
            selection=shown,
            problems=problems,
            count=None,
            max_attempts=0,
        )
    services = services_of(request)
    result = await run_in_threadpool(
        ops.retry_matching, services.sessions, selection, services.clock
    )
    return render(
        request,
        "retried.html",
        user,
        selection=shown,
        sent=len(result.ids),
        ids=result.ids[:SHOWN_SKIPPED],
        skipped=result.skipped[:SHOWN_SKIPPED],
        skipped_count=len(result.skipped),
    )


# -- upload ----------------------------------------------------------------------------------


@router.get("/upload")
def upload_page(request: Request, user: User) -> Response:
    return render(
        request,
        "upload.html",
        user,
        values={"lane": Lane.BULK.value},
        max_mib=BULK_MAX_BYTES // (1024 * 1024),
    )


@router.post("/upload")
async def upload(request: Request, user: User) -> Response:
    # Starlette spools the file part to a temporary file (in memory up to 1 MiB).
    form = await request.form()
    check_csrf(request, user, _form_text(form, CSRF_FIELD))
    services = services_of(request)
    values = {name: (_form_text(form, name) or "").strip() for name in ("note", "source", "lane")}
    upload_file = form.get("file")
    problems: list[str] = []
    note: str | None = None
    source: str | None = None
    lane: str = Lane.BULK.value
    for name, clean in (("note", clean_note), ("source", clean_source), ("lane", clean_lane)):
        if values[name]:
            try:
                cleaned = clean(values[name])
            except ValidationError as exc:
                problems.append(str(exc))
                continue
            if name == "note":
                note = cleaned
            elif name == "source":
                source = cleaned
            elif cleaned is not None:
                lane = cleaned
    if not isinstance(upload_file, UploadFile) or not upload_file.filename:
        problems.append("file: choose a CSV file")

    def page(status: int, **extra: Any) -> Response:
        return render(
            request,
            "upload.html",
            user,
            status=status,
            values=values,
            problems=problems,
            max_mib=BULK_MAX_BYTES // (1024 * 1024),
            **extra,
        )

    if problems:
        return page(422)
    assert isinstance(upload_file, UploadFile)

    def write() -> Any:
        checked = check_csv(upload_file.file, note)
        return services.producer.enqueue_bulk(checked.rows(), source, lane)

    try:
        result = await run_in_threadpool(write)
    except BulkInputError as exc:
        return page(422, bad_lines=exc.problems, bad_count=exc.count, filename=upload_file.filename)
    except ValidationError as exc:  # the header or the whole file
        problems.append(str(exc))
        return page(422)
    finally:
        await upload_file.close()
    return page(200, result=result.as_json(), filename=upload_file.filename)


# -- events ----------------------------------------------------------------------------------


@router.get("/events")
def events_page(request: Request, user: User) -> Response:
    q = request.query_params
    problems: list[str] = []
    before = _int_param(q.get("before"), "before", problems)
    after = _int_param(q.get("after"), "after", problems)
    limit = 50
    rows: list[dict[str, Any]] = []
    if not problems:
        with services_of(request).sessions() as session:
            rows = pages.recent_events(session, after=after, before=before, limit=limit)
    paged = before is not None or after is not None
    return render(
        request,
        "events.html",
        user,
        status=422 if problems else 200,
        rows=rows,
        problems=problems,
        older=urlencode({"before": rows[-1]["id"]})
        if rows and (len(rows) == limit or after)
        else None,
        newer=urlencode({"after": rows[0]["id"]}) if rows and paged else None,
        paged=paged,
    )
