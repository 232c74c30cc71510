"""air-run serve: the OpenAI-compatible HTTP server (needs the serve extra: starlette, uvicorn)."""

from __future__ import annotations

import importlib.util
import sys

import click

from air.errors import AirError
from .options import generation_options, load_bundle, trust_options

SERVE_PACKAGES = ("starlette", "uvicorn", "jinja2")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True)
@click.option("--queue", type=click.IntRange(min=0), default=8, show_default=True,
              help="Requests that may wait while one generates; more get a 429.")
@generation_options
@trust_options
def main(bundle, host, port, queue, max_tokens, temperature, top_p, seed, speculate, proposer, quality, explain,
         memory_budget, threads, trusted, rehash):
    """Serve a compiled BUNDLE over an OpenAI-compatible HTTP API (the generation options are
    the defaults of requests that do not set them)."""
    try:
        missing = [name for name in SERVE_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            raise AirError(f"air-run serve needs {', '.join(missing)}: pip install 'air-runtime[serve]'")
        import uvicorn

        from .server import Defaults, Engine, make_app

        loaded = load_bundle(bundle, threads, memory_budget, trusted, rehash)
        defaults = Defaults(max_tokens, temperature, top_p, seed, speculate, quality, proposer)
        engine = Engine(loaded, queue, defaults, explain)
    except AirError as e:
        click.echo(f"air-run: error: {e}", err=True)
        sys.exit(2)
    click.echo(f"air-run serve: {loaded.manifest['name']} on http://{host}:{port}/v1", err=True)
    try:
        uvicorn.run(make_app(engine), host=host, port=port, log_level="warning")
    finally:
        engine.template.close()
