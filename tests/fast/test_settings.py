"""Settings from the environment and `.env` (SPEC.md, "Configuration")."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fpcancel.errors import BadInput, SettingsError
from fpcancel.settings import RateLimit, Secret, Settings, load_settings

TOKEN = "fp-tok-9c1e7b2a5d"


@pytest.fixture
def no_dotenv(tmp_path: Path) -> Path:
    """A `.env` path that does not exist, so the developer's own `.env` never leaks in."""
    return tmp_path / "absent.env"


def load(no_dotenv: Path, **env: str) -> Settings:
    return load_settings(environ=env, dotenv=no_dotenv)


def test_defaults_are_for_a_laptop(no_dotenv: Path) -> None:
    """With nothing set, every variable takes the default SPEC.md lists."""
    settings = load(no_dotenv)
    assert settings.base_url == "https://demo-api.frontpayment.no/api/v1"
    assert settings.token is None
    assert settings.database_url == "sqlite:///fpcancel.db"
    assert settings.broker_url == "redis://localhost:6379/0"
    assert settings.max_attempts == 8
    assert settings.retry_base_seconds == 5
    assert settings.retry_max_seconds == 900
    assert settings.http_timeout_seconds == 15
    assert settings.rate_limit == RateLimit(240, 60)


def test_every_variable_is_read(no_dotenv: Path) -> None:
    """Each documented variable sets its setting."""
    settings = load(
        no_dotenv,
        FRONTPAYMENT_BASE_URL="https://apigo.frontpayment.no/api/v1/",
        FRONTPAYMENT_TOKEN=TOKEN,
        FPCANCEL_DATABASE_URL="sqlite:////tmp/x.db",
        FPCANCEL_BROKER_URL="redis://cache:6379/3",
        FPCANCEL_MAX_ATTEMPTS="3",
        FPCANCEL_RETRY_BASE_SECONDS="2",
        FPCANCEL_RETRY_MAX_SECONDS="60",
        FPCANCEL_HTTP_TIMEOUT_SECONDS="4",
        FPCANCEL_RATE_LIMIT="20/2",
    )
    assert settings.base_url == "https://apigo.frontpayment.no/api/v1"
    assert settings.token_value == TOKEN
    assert settings.database_url == "sqlite:////tmp/x.db"
    assert settings.broker_url == "redis://cache:6379/3"
    assert settings.max_attempts == 3
    assert (settings.retry_base_seconds, settings.retry_max_seconds) == (2, 60)
    assert settings.http_timeout_seconds == 4
    assert settings.rate_limit == RateLimit(20, 2)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FPCANCEL_MAX_ATTEMPTS", "abc"),
        ("FPCANCEL_MAX_ATTEMPTS", "0"),
        ("FPCANCEL_MAX_ATTEMPTS", "-3"),
        ("FPCANCEL_MAX_ATTEMPTS", "2.5"),
        ("FPCANCEL_RETRY_BASE_SECONDS", "-1"),
        ("FPCANCEL_RETRY_BASE_SECONDS", "nan"),
        ("FPCANCEL_RETRY_BASE_SECONDS", "five"),
        ("FPCANCEL_RETRY_MAX_SECONDS", "inf"),
        ("FPCANCEL_RETRY_MAX_SECONDS", "1"),  # below the default base of 5
        ("FPCANCEL_HTTP_TIMEOUT_SECONDS", "0"),
        ("FPCANCEL_HTTP_TIMEOUT_SECONDS", "15s"),
        ("FPCANCEL_RATE_LIMIT", "240"),
        ("FPCANCEL_RATE_LIMIT", "0/60"),
        ("FPCANCEL_RATE_LIMIT", "x/y"),
        ("FPCANCEL_RATE_LIMIT", "240/0"),
        ("FPCANCEL_RATE_LIMIT", "240/-60"),
        ("FPCANCEL_RATE_LIMIT", "240/nan"),
        ("FPCANCEL_RATE_LIMIT", "240/60/2"),
        ("FRONTPAYMENT_BASE_URL", "demo-api.frontpayment.no/api/v1"),
        ("FRONTPAYMENT_BASE_URL", "ftp://demo-api.frontpayment.no/api/v1"),
    ],
)
def test_a_malformed_value_is_a_clear_error_naming_the_variable(
    no_dotenv: Path, name: str, value: str
) -> None:
    """A malformed variable raises SettingsError (exit 2), one line starting with its name."""
    with pytest.raises(SettingsError) as caught:
        load(no_dotenv, **{name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message
    assert isinstance(caught.value, BadInput) and caught.value.exit_code == 2


def test_fractional_durations_are_accepted(no_dotenv: Path) -> None:
    """Durations may be fractional seconds, as the tests' `0.2` needs."""
    settings = load(
        no_dotenv,
        FPCANCEL_RETRY_BASE_SECONDS="0.2",
        FPCANCEL_RETRY_MAX_SECONDS="1.5",
        FPCANCEL_HTTP_TIMEOUT_SECONDS="0.2",
        FPCANCEL_RATE_LIMIT="3/0.2",
    )
    assert settings.retry_base_seconds == pytest.approx(0.2)
    assert settings.retry_max_seconds == pytest.approx(1.5)
    assert settings.http_timeout_seconds == pytest.approx(0.2)
    assert settings.rate_limit == RateLimit(3, 0.2)


def test_a_zero_backoff_is_allowed(no_dotenv: Path) -> None:
    """A zero retry base (retry at once) is a valid choice, not an error."""
    assert load(no_dotenv, FPCANCEL_RETRY_BASE_SECONDS="0").retry_base_seconds == 0


def test_blank_values_take_the_default(no_dotenv: Path) -> None:
    """`FPCANCEL_MAX_ATTEMPTS=` (set but empty) means the default, not an error."""
    assert load(no_dotenv, FPCANCEL_MAX_ATTEMPTS="  ", FPCANCEL_RATE_LIMIT="").max_attempts == 8


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://fp:pw@db:5432/fpcancel", "postgresql+psycopg://fp:pw@db:5432/fpcancel"),
        ("postgres://fp@db/fpcancel", "postgresql+psycopg://fp@db/fpcancel"),
        ("postgresql+psycopg://fp@db/fpcancel", "postgresql+psycopg://fp@db/fpcancel"),
        ("sqlite:///jobs.db", "sqlite:///jobs.db"),
    ],
)
def test_postgresql_urls_mean_psycopg_3(no_dotenv: Path, given: str, expected: str) -> None:
    """`postgresql://` is taken as psycopg 3; other URLs pass through unchanged."""
    assert load(no_dotenv, FPCANCEL_DATABASE_URL=given).database_url == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://demo-api.frontpayment.no/api/v1",
        "http://10.0.0.5:8080/api/v1",
        "http://localhost.evil.example/api/v1",
        "http://127.0.0.1@evil.example/api/v1",
        "http://[::ffff:10.0.0.1]/api/v1",
    ],
)
def test_plain_http_to_a_remote_host_is_refused(no_dotenv: Path, url: str) -> None:
    """The token never travels in clear text: http to anything but loopback is refused."""
    with pytest.raises(SettingsError, match=r"^FRONTPAYMENT_BASE_URL: "):
        load(no_dotenv, FRONTPAYMENT_BASE_URL=url)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080/api/v1",
        "http://LOCALHOST:8080/api/v1",
        "http://127.0.0.1:9000/api/v1",
        "http://127.5.6.7/api/v1",
        "http://[::1]:8080/api/v1",
    ],
)
def test_plain_http_to_loopback_is_allowed(no_dotenv: Path, url: str) -> None:
    """The local sandbox over http on a loopback host is fine."""
    # The host is compared and sent lower-cased: one spelling of it.
    assert load(no_dotenv, FRONTPAYMENT_BASE_URL=url).base_url == url.replace(
        "LOCALHOST", "localhost"
    )


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    """`.env` fills in what the environment does not set; where both do, the environment wins."""
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "FPCANCEL_MAX_ATTEMPTS=3\n"
        "FPCANCEL_RETRY_BASE_SECONDS=0.2\n"
        f"FRONTPAYMENT_TOKEN={TOKEN}\n"
        "# a comment\n"
    )
    settings = load_settings(environ={"FPCANCEL_MAX_ATTEMPTS": "5"}, dotenv=dotenv)
    assert settings.max_attempts == 5
    assert settings.retry_base_seconds == pytest.approx(0.2)
    assert settings.token_value == TOKEN


def test_a_malformed_value_in_dotenv_is_an_error_too(tmp_path: Path) -> None:
    """A bad number in `.env` is refused just like one in the environment."""
    dotenv = tmp_path / ".env"
    dotenv.write_text("FPCANCEL_RATE_LIMIT=lots\n")
    with pytest.raises(SettingsError, match=r"^FPCANCEL_RATE_LIMIT: "):
        load_settings(environ={}, dotenv=dotenv)


def test_the_worker_refuses_to_start_without_a_token(no_dotenv: Path) -> None:
    """No (or a blank) FRONTPAYMENT_TOKEN: asking for it is a SettingsError naming the variable."""
    for env in ({}, {"FRONTPAYMENT_TOKEN": "   "}):
        settings = load_settings(environ=env, dotenv=no_dotenv)
        with pytest.raises(SettingsError, match=r"^FRONTPAYMENT_TOKEN: "):
            settings.check_provider()


def test_the_token_never_shows_in_repr_or_str(no_dotenv: Path) -> None:
    """Printing or logging the settings (or the secret itself) never reveals the token."""
    settings = load(no_dotenv, FRONTPAYMENT_TOKEN=TOKEN)
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings)
    assert TOKEN not in f"{settings!r} {settings}"
    assert settings.token is not None
    assert TOKEN not in repr(settings.token)
    assert TOKEN not in str(settings.token)
    assert TOKEN not in f"{settings.token}"
    assert settings.token.reveal() == TOKEN


def test_secret_compares_by_value_without_showing_it() -> None:
    """Two secrets with the same value are equal; `str` of either is the mask."""
    assert Secret(TOKEN) == Secret(TOKEN)
    assert Secret(TOKEN) != Secret("other")
    assert str(Secret(TOKEN)) == str(Secret("other"))


# -- hostile and odd settings (issue 10) ----------------------------------------------------------


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://example.com\\@127.0.0.1/api/v1", "credentials"),
        ("http://example.com\\.127.0.0.1/api/v1", "path"),
        ("http://example.com%5C@127.0.0.1/api/v1", "credentials"),
        ("https://user:secret@apigo.frontpayment.no/api/v1", "credentials"),
        ("http://127.0.0.1:8765/api/v1?debug=1", "query or fragment"),
        ("http://127.0.0.1:8765/api/v1#x", "query or fragment"),
        ("http://127.0.0.1:99999/api/v1", "not a valid URL"),
        ("http://127.0.0.1:0/api/v1", "outside 1-65535"),
        ("https://apigo.frontpayment.no/api/v1/%2e%2e", "path"),
        ("https://apigo.frontpayment.no/api v1", "white space"),
        ("https://apigo.frontpayment.no\n.evil/api", "white space"),
        ("https://front\u0440ayment.no/api/v1", "non-ASCII"),  # a Cyrillic letter
        ("ftp://127.0.0.1/api", "not an http(s) URL"),
        ("http://127.1/api/v1", "loopback"),
    ],
)
def test_base_urls_that_could_send_the_token_elsewhere_are_refused(
    no_dotenv: Path, url: str, why: str
) -> None:
    """Parsed as the sending library parses it; anything ambiguous, credentialed or odd is
    refused naming the variable, and a password never appears in the message."""
    with pytest.raises(SettingsError) as caught:
        load(no_dotenv, FRONTPAYMENT_BASE_URL=url)
    message = str(caught.value)
    assert message.startswith("FRONTPAYMENT_BASE_URL") and why in message
    assert "secret" not in message


urlish = st.text(
    alphabet=st.sampled_from(list("htps:/\\@.?#%[]:0123456789 abcdelmoxy-_~\t")), max_size=40
).map(lambda tail: "http://" + tail) | st.text(max_size=40)


@given(urlish)
def test_an_accepted_base_url_sends_to_the_host_that_was_checked(url: str) -> None:
    """The pair: whatever `check_base_url` accepts, `requests` sends to that same scheme, host and
    port; and plain http only to loopback."""
    import requests
    from urllib3.util import parse_url

    from fpcancel.settings import check_base_url, is_loopback_host

    try:
        checked = check_base_url(url)
    except SettingsError:
        return
    sent = parse_url(
        requests.Request("POST", checked + "/connect/orders/cancel/ODR1").prepare().url
    )
    mine = parse_url(checked)
    assert (sent.scheme, sent.host, sent.port, sent.auth) == (
        mine.scheme,
        mine.host,
        mine.port,
        None,
    )
    if sent.scheme == "http":
        assert is_loopback_host(sent.host or "")


@pytest.mark.parametrize(
    "name, value",
    [
        ("FPCANCEL_HTTP_TIMEOUT_SECONDS", "1e308"),
        ("FPCANCEL_HTTP_TIMEOUT_SECONDS", "nan"),
        ("FPCANCEL_HTTP_TIMEOUT_SECONDS", "１５"),  # full-width digits
        ("FPCANCEL_HTTP_TIMEOUT_SECONDS", "1_5"),
        ("FPCANCEL_SCHEDULER_INTERVAL_SECONDS", "1e308"),
        ("FPCANCEL_DISPATCH_LEASE_SECONDS", "1e308"),
        ("FPCANCEL_RETRY_BASE_SECONDS", "1e308"),
        ("FPCANCEL_RETRY_MAX_SECONDS", "1e308"),
        ("FPCANCEL_RATE_LIMIT", "1/1e308"),
        ("FPCANCEL_RATE_LIMIT", "99999999999/60"),
        ("FPCANCEL_RATE_LIMIT", "240/0.0000001"),
        ("FPCANCEL_MAX_ATTEMPTS", "99999999999999999999"),
        ("FPCANCEL_MAX_LOST_CLAIMS", "1000000"),
        ("FRONTPAYMENT_TOKEN", "abc\ndef"),
        ("FRONTPAYMENT_TOKEN", "abc def"),
        ("FRONTPAYMENT_TOKEN", "tøken"),
        ("FPCANCEL_DATABASE_URL", "postgresql://u:pw@db:99999/x"),
        ("FPCANCEL_DATABASE_URL", "postgresql://u:pw@db:port/x"),
        ("FPCANCEL_DATABASE_URL", "mysql://u:pw@db/x"),
        ("FPCANCEL_DATABASE_URL", "nonsense"),
        ("FPCANCEL_BROKER_URL", "redis://:pw@cache:99999/0"),
        ("FPCANCEL_BROKER_URL", "redis://cache:port/0"),
        ("FPCANCEL_BROKER_URL", "redis://cache:6379/zero"),
        ("FPCANCEL_BROKER_URL", "amqp://guest@rabbit//"),
    ],
)
def test_settings_that_pass_a_number_check_but_cannot_work_are_refused(
    no_dotenv: Path, name: str, value: str
) -> None:
    """Each names its variable; none quotes the token or a password."""
    with pytest.raises(SettingsError) as caught:
        load(no_dotenv, **{name: value})
    message = str(caught.value)
    assert message.startswith(name), message
    assert "pw" not in message and "abc" not in message


def test_an_env_file_line_that_cannot_be_parsed_is_an_error(tmp_path: Path) -> None:
    """A line python-dotenv would skip silently names the file and the line."""
    dotenv = tmp_path / ".env"
    dotenv.write_text("FPCANCEL_MAX_ATTEMPTS=3\nthis line is not a setting\n")
    with pytest.raises(SettingsError, match=r"\.env: line 2 cannot be parsed"):
        load_settings(environ={}, dotenv=dotenv)


def test_an_env_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    """A Latin-1 `.env` names the file and the line, not a traceback."""
    dotenv = tmp_path / ".env"
    dotenv.write_bytes(b"FPCANCEL_MAX_ATTEMPTS=3\nFRONTPAYMENT_TOKEN=caf\xe9\n")
    with pytest.raises(SettingsError, match=r"\.env: line 2 is not valid UTF-8"):
        load_settings(environ={}, dotenv=dotenv)


@pytest.mark.parametrize(
    "env, dotenv, named",
    [
        ({"FPCANCEL_HTTP_TIMEOUT_SECONDS": "1e308"}, None, "FPCANCEL_HTTP_TIMEOUT_SECONDS"),
        ({"FRONTPAYMENT_TOKEN": "a\nb"}, None, "FRONTPAYMENT_TOKEN"),
        ({"FPCANCEL_BROKER_URL": "redis://h:99999/0"}, None, "FPCANCEL_BROKER_URL"),
        ({}, b"FPCANCEL_RATE_LIMIT 240/60\n", ".env: line 1"),
        ({}, b"\xff\xfe", ".env: line 1"),
    ],
)
def test_every_command_refuses_to_start_on_a_bad_setting(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    dotenv: bytes | None,
    named: str,
) -> None:
    """Exit 2 at start with one line naming the variable or the file."""
    from click.testing import CliRunner

    from fpcancel.cli import main

    monkeypatch.chdir(tmp_path)
    if dotenv is not None:
        (tmp_path / ".env").write_bytes(dotenv)
    base = {
        "FPCANCEL_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        "FRONTPAYMENT_TOKEN": "tok-1",
    }
    for args in (["worker"], ["stats"], ["jobs", "list"], ["enqueue", "ODR1", "--note", "n"]):
        result = CliRunner().invoke(main, args, env={**base, **env})
        assert result.exit_code == 2, (args, result.output)
        assert named in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "x.db").exists() or args[0] != "enqueue"
