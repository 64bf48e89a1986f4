"""A Celery monitor on real parts: a `fpcancel worker` sends no task events until a monitor asks
(as Flower does at start and every minute, with Celery's `enable_events` command), then the
monitor sees each cancel task."""

import threading
from typing import Any

from celery import Celery

from tests.real.conftest import cli, statuses, wait_until


def _enqueue(env: dict[str, str], order: str) -> None:
    done = cli(env, "enqueue", order, "--note", "Out of stock")
    assert done.returncode == 0, done.stderr


def test_task_events_start_when_a_monitor_asks_for_them(
    env: dict[str, str], broker_url: str, sessions: Any, start_worker: Any
) -> None:
    start_worker(env)
    app = Celery(broker=broker_url)
    seen: list[dict[str, Any]] = []
    with app.connection() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": seen.append})
        listener = threading.Thread(
            target=receiver.capture, kwargs={"limit": None, "wakeup": False}, daemon=True
        )
        listener.start()
        _listening(app, seen)
        try:
            _run(env, app, sessions, seen)
        finally:
            receiver.should_stop = True
            listener.join(5)
    received = [e for e in seen if e["type"] == "task-received"]
    assert [e["name"] for e in received] == ["fpcancel.cancel"]
    assert received[0]["args"].startswith("[2,")  # the job enqueued after the monitor asked


def _listening(app: Celery, seen: list[dict[str, Any]]) -> None:
    """Wait until the receiver hears events (it subscribes in its own thread)."""
    with app.events.default_dispatcher() as dispatcher:

        def heard() -> bool:
            dispatcher.send("test-hello")
            return any(e["type"] == "test-hello" for e in seen)

        wait_until(heard, 10, "the event receiver", interval=0.2)


def _run(env: dict[str, str], app: Celery, sessions: Any, seen: list[dict[str, Any]]) -> None:
    _enqueue(env, "ODR700000001")  # before a monitor asks: no task events
    wait_until(lambda: statuses(sessions).get("ODR700000001") == "succeeded", 30, "job 1")
    replies = app.control.enable_events(reply=True, timeout=5)
    assert len(replies) == 1, replies  # the one worker answered the monitor
    _enqueue(env, "ODR700000002")
    wait_until(lambda: statuses(sessions).get("ODR700000002") == "succeeded", 30, "job 2")
    wait_until(
        lambda: any(e["type"] == "task-succeeded" for e in seen), 10, "a task-succeeded event"
    )
