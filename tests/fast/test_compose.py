"""docker-compose.yml and the Dockerfile agree with the CLI and keep secrets out of the repository."""

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from fpcancel.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# One-shot services (they run and exit) and the dev-only sandbox need no healthcheck.
NO_HEALTHCHECK = {"migrate", "sandbox"}
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|AUTH", re.IGNORECASE)
INTERPOLATED = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?\}$")


def ours(service: dict[str, Any]) -> bool:
    """Built from this repository (`build: .`) or tagged with our image name."""
    return service.get("build") == "." or str(service.get("image", "")).startswith("fpcancel")


def as_args(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def fpcancel_commands() -> list[tuple[str, list[str]]]:
    """Every fpcancel command compose runs: each of our services' `command`, and healthchecks
    that call `fpcancel`."""
    found: list[tuple[str, list[str]]] = []
    for name, service in SERVICES.items():
        if ours(service):
            found.append((name, as_args(service.get("command", []))))
        test = as_args(service.get("healthcheck", {}).get("test", []))
        if test[:1] in (["CMD"], ["CMD-SHELL"]):
            test = test[1:] if test[0] == "CMD" else shlex.split(" ".join(test[1:]))
        if test[:1] == ["fpcancel"]:
            found.append((f"{name} healthcheck", test[1:]))
    return found


def test_compose_has_our_services() -> None:
    """The image's services are there: migrate, worker, web, sandbox."""
    assert {"migrate", "worker", "web", "sandbox"} <= {n for n, s in SERVICES.items() if ours(s)}


@pytest.mark.parametrize(("where", "args"), fpcancel_commands(), ids=lambda v: str(v))
def test_each_compose_command_is_one_the_cli_accepts(where: str, args: list[str]) -> None:
    """`fpcancel <command> --help` exits 0 for each command compose runs in our image."""
    assert args, f"{where}: no command (the image's default would run)"
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, f"{where}: fpcancel {' '.join(args)}: {result.output}"


def test_the_image_entrypoint_is_fpcancel() -> None:
    """Compose's `command`s are fpcancel's arguments because the Dockerfile says so."""
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    entrypoints = [ln for ln in lines if ln.upper().startswith("ENTRYPOINT")]
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    assert entrypoints[-1] in ('ENTRYPOINT ["fpcancel"]', "ENTRYPOINT fpcancel")


def test_postgres_keeps_its_data_in_a_volume() -> None:
    """The database survives `docker compose down` / recreation: a named volume on its data."""
    volumes = [str(v) for v in SERVICES["postgres"].get("volumes", [])]
    data = [v for v in volumes if v.split(":")[1:2] == ["/var/lib/postgresql/data"]]
    assert data, volumes
    assert data[0].split(":")[0] in (COMPOSE.get("volumes") or {})


def test_secrets_come_from_a_gitignored_env_file() -> None:
    """Our services read .env; .env is gitignored and .env.example (committed) shows its keys;
    no secret-looking variable in compose has a literal value."""
    for name, service in SERVICES.items():
        if ours(service):
            assert service.get("env_file") in (".env", [".env"]), name
    ignored = {ln.strip() for ln in (ROOT / ".gitignore").read_text().splitlines()}
    assert ".env" in ignored or "/.env" in ignored
    example = (ROOT / ".env.example").read_text()
    for key in ("FRONTPAYMENT_TOKEN", "POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH"):
        assert re.search(rf"^{key}=", example, re.MULTILINE), key
    for name, service in SERVICES.items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        for key, value in environment.items():
            if SECRET_NAME.search(key):
                assert INTERPOLATED.match(str(value)), f"{name}: {key} is a literal"
            if "://" in str(value) and "@" in str(value):
                credentials = str(value).split("://", 1)[1].split("@", 1)[0]
                assert ":" not in credentials or "${" in credentials, f"{name}: {key}"


def test_every_long_running_service_has_a_healthcheck() -> None:
    """All but the one-shot migration and the dev sandbox say when they are healthy."""
    missing = [
        name
        for name, service in SERVICES.items()
        if name not in NO_HEALTHCHECK and not service.get("healthcheck", {}).get("test")
    ]
    assert missing == []
    assert SERVICES["migrate"].get("restart") == "no"


def test_flower_takes_its_password_from_the_environment() -> None:
    """Flower's basic auth is interpolated from .env, required, and never a literal."""
    flower = SERVICES["flower"]
    environment = flower.get("environment") or {}
    value = str(environment.get("FLOWER_BASIC_AUTH", ""))
    assert INTERPOLATED.match(value) and ":?" in value, value
    assert not any("basic_auth" in arg for arg in as_args(flower.get("command", [])))
