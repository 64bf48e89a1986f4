"""A local stand-in for Front Payment's order API, for tests, benchmarks, the demo and users.

``SandboxServer`` answers the two calls fpcancel makes, with the documented bodies and headers:

- ``POST /api/v1/connect/orders/cancel/{ORDER_ID}`` with JSON ``{"cancellationNote": "..."}``
- ``GET /api/v1/connect/orders/status/{ORDER_ID}``

Any other path gets nginx's HTML 404, as a wrong URL does in production. A provider call is checked
in this order: bearer token (401), rate limit (429), the order's next scripted step, real behaviour.

Rate limit, per bearer token, ``N`` calls per ``W`` seconds (``rate_limit=(N, W)``), in one of two
modes (``rate_mode``):

- ``"laravel"`` (the default) counts as the provider does, with Laravel's ``ThrottleRequests``
  middleware and ``RateLimiter::hit``: a fixed window per key that opens at the first call arriving
  after the previous window expired and lasts W; up to N calls are admitted in it. An admitted call
  carries ``x-ratelimit-limit: N`` and ``x-ratelimit-remaining: N - hits``, read when the answer is
  built (after the answer delay or a ``slow:S`` step), as Laravel reads it after the controller
  ran: calls that arrived meanwhile count, and a window that expired meanwhile reads as N. Past N
  the answer is 429 ``{"message": "Too Many Attempts."}`` with ``x-ratelimit-remaining: 0``,
  ``Retry-After`` and ``X-RateLimit-Reset``, in Laravel's whole-second maths: the window's timer is
  ``floor(opened + W)`` in epoch seconds, ``Retry-After = timer - floor(now)`` and
  ``X-RateLimit-Reset = floor(now) + Retry-After``. So, as in production, ``Retry-After`` can be up
  to a second short of the window's real end and the reset time up to a second early. Refused calls
  are not counted and never open a window. Deviations from Laravel: W may be fractional (tests use
  sub-second windows; times are kept as floats, as Redis's millisecond expiry keeps them), and
  ``Retry-After`` is at least 1 where Laravel's ``max(0, ...)`` sends 0 in the last fraction of a
  second before the window ends.
- ``"sliding"``: a strict sliding window, at most N admitted calls in any W seconds; remaining is
  N minus the calls admitted in the last W seconds when the answer is built; ``Retry-After`` is
  the wait until the oldest admitted call leaves the window, rounded up.

``answer_delay_seconds`` makes every provider call answer that long after it arrived (the call is
counted at its arrival), to simulate a provider that takes, say, 30 ms per answer.

Real behaviour: SENT and INVOICED orders become CANCELLED (202); PAID gives 400
``orderStatusAlreadyPaid``; CANCELLED and REFUNDED give 400 ``orderStatusNotCancellable``; MISSING
orders and malformed ids give 404 ``orderNotFound``; a payload without a usable ``cancellationNote``
gives 417 (checked first, as Laravel validates before it looks the order up). Orders nobody
registered are created as SENT (``unknown_orders="open"``) or treated as MISSING (``"missing"``).

Scripts make an order misbehave on purpose. ``script`` steps are consumed one per cancel POST,
``status_script`` steps one per status GET; once a script is empty, real behaviour resumes:

==========================  ====================================================================
``ok``                      real behaviour
``510``                     the documented 510 body; nothing changes
``NNN``                     JSON error with that status (``400``: ``someUnknownBusinessRule``)
``NNN:text``                the same with ``message`` set to ``text``
``NNN:retry-after=S``       adds ``Retry-After: S`` (combines: ``400:text:retry-after=S``)
``NNN-html``                nginx's HTML error page with that status (``502-html``, ``504-html``)
``417``                     the documented 417 ``payloadValidationErrors`` with field ``errors``
``401`` / ``429``           Laravel's ``Unauthenticated.`` / ``Too Many Attempts.`` (retry 1 s)
``slow:S``                  wait S seconds, then real behaviour
``late:S``                  real behaviour at once (the cancel takes effect), answer S seconds later
``drop``                    real behaviour, then close the connection without answering
``apply-510``               real behaviour, but answer 510
==========================  ====================================================================

Control endpoints under ``/_sandbox/`` (no auth, no rate limit) let ``SandboxControl`` drive a
sandbox in another process: ``PUT|GET /_sandbox/orders/{id}``, ``GET|DELETE /_sandbox/calls``,
``PUT /_sandbox/config`` (keys ``token``, ``rate_limit``, ``rate_mode``, ``answer_delay_seconds``,
``unknown_orders``, ``max_note_length``), ``POST /_sandbox/scenario`` (``orders`` and the same
keys), ``GET /_sandbox/stats``.

Rate accounting: every logged call says whether the rate limit refused it (``throttled``); the
stats' ``rate`` object counts ``admitted`` calls (authorized API calls the limit let through),
``refused`` ones (the limit's 429s) and the ``worst_window``: the most admitted calls whose arrival
times fall within any W seconds, the promise "never more than N calls in any W seconds" checked by
a sliding scan. ``admitted_arrivals``, ``max_calls_in_window`` and ``fixed_windows`` compute the
same from a call log, for benchmarks.

The bearer token is never kept: the server holds only its SHA-256 digest, and the call log records
whether a call was authorized, never the header.

Its parts, one concern each:

    steps.py        the step language of scripted orders
    bodies.py       what it answers: the documented JSON bodies, nginx's pages, Laravel's messages
    ratewindows.py  how it counts calls (Laravel's fixed window, or sliding), and rate accounting
    state.py        the provider itself: orders, scripts, the call log, configuration
    server.py       the HTTP server and `SandboxServer`
    control.py      the /_sandbox/ control endpoints and `SandboxControl`, their client
    receiver.py     the shop's side: a webhook receiver that checks signatures

Webhooks: ``POST /_sandbox/webhook`` receives fpcancel's outcome events (point
FPCANCEL_WEBHOOK_URL at it), checks each signature against the secret set with
``PUT /_sandbox/receiver {"secret": "whsec_..."}`` and keeps them for ``GET /_sandbox/webhooks``.
"""

from fpcancel.sandbox.control import SandboxControl
from fpcancel.sandbox.ratewindows import (
    RATE_MODES,
    admitted_arrivals,
    fixed_windows,
    max_calls_in_window,
    parse_rate_limit,
)
from fpcancel.sandbox.server import SandboxServer
from fpcancel.sandbox.state import ORDER_STATUSES, OrderScript

__all__ = [
    "ORDER_STATUSES",
    "RATE_MODES",
    "OrderScript",
    "SandboxControl",
    "SandboxServer",
    "admitted_arrivals",
    "fixed_windows",
    "max_calls_in_window",
    "parse_rate_limit",
]
