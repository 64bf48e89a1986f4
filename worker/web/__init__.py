"""`fpcancel serve`: the HTTP API for shops in any language and the ops dashboard (SPEC.md, "HTTP
service").

app.py        create_app(): the one ASGI app, built from a `WebServices`, nothing at import time
services.py   what the app talks to: sessions, the producer, the broker check, the fleet pause
errors.py     the JSON error shape `{"error", "details"}`, for every error
auth.py       bearer keys and scopes; the dashboard's signed session cookie and CSRF tokens
limits.py     request body size limits (413), bodies spooled to a temporary file
api.py        /v1/...: cancellations, bulk, jobs, retry, stats, events
health.py     /healthz
dashboard.py  the pages at /: overview, jobs, a job, retry, upload, events
charts.py     the overview's charts as inline SVG (no script)
pages.py      what the dashboard reads: time series, the pause state
keys.py       API keys: made, found, revoked (no web framework; the CLI uses it too)
templates/    Jinja2, autoescaped; static/: the style sheet

Nothing here is imported by `import fpcancel`; `fpcancel.web.app` pulls in FastAPI.
"""
