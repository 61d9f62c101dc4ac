"""`medfuse serve`: the clinician review service (FastAPI + uvicorn)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from medfuse.errors import InputError
from medfuse.model.locate import MODEL_ENV


def serve_cmd(
    model: Path | None = typer.Option(None, "--model", "-m", help=f"Checkpoint folder (default: ${MODEL_ENV}, "
                                                                  "else the shipped checkpoint)."),
    db: str = typer.Option("sqlite:///medfuse-serve.db", "--db", help="SQLAlchemy database URL: sqlite:///FILE "
                                                                      "(default) or postgresql://USER@HOST/DB."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    tokens: Path | None = typer.Option(None, "--tokens", help="Token file (JSON of name, role and SHA-256 hash). "
                                                               "Without it, one admin token is made for this run "
                                                               "and printed."),
    add_token: str | None = typer.Option(None, "--add-token", metavar="ROLE:NAME",
                                         help="Add a token (role clinician, api or admin) to --tokens, print it "
                                              "once, and exit."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="Generated tokens per diagnosed case."),
    no_explain: bool = typer.Option(False, "--no-explain", help="Do not compute explanations for submitted cases."),
    lazy: bool = typer.Option(False, "--lazy", help="Load the model on first use instead of at start-up."),
) -> None:
    """Serve diagnosis, explanations, the clinician review page and an OpenAI-compatible API."""
    from medfuse.serve.auth import TokenRegistry

    if add_token is not None:
        if tokens is None:
            raise InputError(None, "--add-token needs --tokens FILE to store the token's hash in")
        role, _, name = add_token.partition(":")
        registry = TokenRegistry.read(tokens) if tokens.exists() else TokenRegistry()
        token = registry.add(name, role)
        registry.write(tokens)
        print(f"added a {role} token '{name}' to {tokens}; it is shown only now:", file=sys.stderr)
        print(token)
        return
    if not 0 < port < 65536:
        raise InputError(None, f"--port {port}: use 1-65535")
    if max_new_tokens < 1:
        raise InputError(None, "--max-new-tokens must be at least 1")
    if tokens is not None:
        registry = TokenRegistry.read(tokens)
        if not len(registry):
            raise InputError(tokens, "holds no tokens; add one with --add-token ROLE:NAME")
    else:
        registry = TokenRegistry()
        token = registry.add("admin", "admin")
        print(f"no --tokens file: admin token for this run: {token}", file=sys.stderr)

    import uvicorn

    from medfuse.model.locate import resolve_checkpoint
    from medfuse.serve.app import ServeSettings, create_app

    checkpoint = resolve_checkpoint(model)
    if not checkpoint.is_dir():
        raise InputError(checkpoint, "no such checkpoint folder")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(ServeSettings(tokens=registry, checkpoint=checkpoint, db_url=db, max_new_tokens=max_new_tokens,
                                   explain=not no_explain, preload=not lazy))
    print(f"medfuse serve: http://{host}:{port}/ (review pages at /review/REF)", file=sys.stderr)
    # uvicorn's own access log prints full paths; the app logs route templates instead.
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info")
