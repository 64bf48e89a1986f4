"""`fpcancel serve`: the HTTP API and the ops dashboard (uvicorn)."""

import click

from fpcancel.cli.context import CliContext, log_format_option, pass_cli, say


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 0.0.0.0 for every interface (behind a TLS proxy).",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@log_format_option
@click.option(
    "--forwarded-allow-ips",
    default="127.0.0.1",
    show_default=True,
    help="Proxies whose X-Forwarded-Proto/For are believed (so cookies get Secure behind TLS).",
)
@pass_cli
def serve(cli: CliContext, host: str, port: int, log_format: str, forwarded_allow_ips: str) -> None:
    """Serve the HTTP API (/v1/..., /healthz, /openapi.json) and the ops dashboard (/).

    API clients send Authorization: Bearer KEY (fpcancel keys create --name N --scope
    enqueue|read|ops); the dashboard signs in with an ops key. Errors are JSON:
    {"error": "...", "details": [...]}. Bodies: 64 KiB at most, except POST
    /v1/cancellations/bulk and the dashboard's upload: 64 MiB of CSV, 16 MiB of JSON rows.
    Dashboard sessions are signed with FPCANCEL_WEB_SECRET; without it, with a random secret
    made at start, so signing in again is needed after a restart. One log line per request
    with the key's name, never the key. Run `fpcancel db upgrade` first.
    """
    import uvicorn

    from fpcancel.logs import setup_logging
    from fpcancel.service import preflight_database
    from fpcancel.web.app import create_app
    from fpcancel.web.services import build_services

    settings = cli.settings
    setup_logging("INFO", as_json=log_format == "json", redactor=settings.redactor)
    preflight_database(cli.engine)
    services = build_services(settings)
    app = create_app(services)
    if settings.web_secret is None:
        say(
            "FPCANCEL_WEB_SECRET is not set: dashboard sessions are signed with a random secret "
            "and end when this process stops"
        )
    say(f"fpcancel serve: http://{host}:{port}/ (dashboard), /v1/ (API), /healthz")
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,  # fpcancel logs each request itself, with the key's name
            proxy_headers=True,
            forwarded_allow_ips=forwarded_allow_ips,
            server_header=False,
        )
    finally:
        services.close()


COMMANDS = [serve]
