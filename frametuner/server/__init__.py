"""``frametuner server``: a local web UI to configure, launch, watch and preview jobs.

FastAPI app (``create_app``) over a SQLite job table; each job runs the frametuner CLI
as a subprocess and is followed through its files (``events.jsonl``, the log). Nothing
here imports torch.
"""

from __future__ import annotations

from .settings import DEFAULT_HOST, DEFAULT_PORT, ServerSettings, default_data_dir, is_loopback

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ServerSettings", "create_app", "default_data_dir", "is_loopback", "serve"]


def create_app(settings: ServerSettings):
    from .app import create_app as build

    return build(settings)


def serve(settings: ServerSettings, token_generated: bool = False) -> None:
    """Run the server in the foreground until Ctrl-C (jobs keep running; a restart reattaches)."""
    import uvicorn

    app = create_app(settings)
    shown_host = settings.host
    if shown_host in ("0.0.0.0", "::"):  # every interface: show a name others can reach
        import socket

        shown_host = socket.gethostname()
    shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host
    url = f"http://{shown_host}:{settings.port}/"
    if settings.token:
        url += f"?token={settings.token}"
    print(f"frametuner server: data in {settings.data_dir}", flush=True)
    print(f"frametuner server: configs from the web UI may read files in {', '.join(map(str, settings.read_roots))} "
          "and their job's folder (--allow-path DIR adds one)", flush=True)
    print(f"frametuner server: open {url}", flush=True)
    if token_generated:
        print("frametuner server: access token generated for this run (pass --token to choose one)", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=3)
