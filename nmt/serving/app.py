"""The server: LitServe's app with our checks, routes and error shape, run until a signal.

Processes: this one runs uvicorn (HTTP, request checks, the demo page) in its main
thread; LitServe starts a multiprocessing manager (its queues) and one inference worker
process per API (nmt/serving/api.py), which loads the model and decodes.

- ``Gate`` (ASGI middleware) refuses a body over ``max_body_bytes`` with 413 before
  reading it (Content-Length), or as soon as a chunked body passes the limit, and checks
  the bodies of POST /translate and /caption (nmt/serving/requests.py) so that only
  valid requests are queued: one bad request never fails a batch of good ones.
- Every error is JSON ``{"error": "<one line>"}`` with a 4xx status (a 5xx only for a
  bug or a timeout), never a traceback.
- SIGTERM or SIGINT: uvicorn stops listening (new connections are refused), closes
  idle connections, lets the requests in flight finish (up to ``timeout`` seconds),
  then the workers and the manager are stopped and the process exits 0.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import litserve as ls
import uvicorn
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nmt.core.errors import ConfigError
from nmt.serving.requests import RequestError

STATIC_DIR = Path(__file__).resolve().parent / "static"
Check = Callable[[bytes], object]  # raises RequestError for a body it refuses


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


class Gate:
    """Body limit and request checks, before anything reads or queues a request."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, checks: dict[str, Check]) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.checks = checks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self.refuse(scope, receive, send, 413, f"the request body is {declared.decode()} "
                              f"bytes; this server takes at most {limit}")
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await self.refuse(scope, receive, send, 413, "the request body is over "
                                  f"{limit} bytes, this server's limit")
                return
        check = self.checks.get(scope["path"])
        if check is not None:
            try:
                check(bytes(body))
            except RequestError as e:
                await self.refuse(scope, receive, send, e.status, e.message)
                return
            # Checked JSON: whatever Content-Type the client sent (curl -d sends a form's).
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, replay(bytes(body), receive), send)

    @staticmethod
    async def refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str
                     ) -> None:
        response = error_response(status, message)
        if status == 413:  # the rest of the body is not read: this connection is done
            response.headers["connection"] = "close"
        await response(scope, receive, send)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body read already, then what the client sends next."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


class NMTServer(ls.LitServer):
    """LitServer with our routes and error shape, served by ``serve`` (below)."""

    def add_routes(self, info: dict[str, Any], static_dir: Path, caption: bool) -> None:
        app = self.app
        # LitServe's own "/" (a plain text line) and "/info" give way to ours.
        app.router.routes = [r for r in app.router.routes
                             if not (isinstance(r, APIRoute) and r.path in ("/", "/info"))]

        async def index() -> Response:
            page = static_dir / "index.html"
            if not page.is_file():
                return error_response(404, "no demo page here (index.html is not in "
                                      f"{static_dir})")
            return HTMLResponse(page.read_text(encoding="utf-8"))

        async def static(path: str) -> Response:
            root = static_dir.resolve()
            file = (root / path).resolve()
            if root not in file.parents or not file.is_file():
                return error_response(404, f"/static/{path}: no such file")
            return FileResponse(file)

        async def server_info() -> dict[str, Any]:
            return info

        app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
        app.add_api_route("/static/{path:path}", static, methods=["GET"],
                          include_in_schema=False)
        app.add_api_route("/info", server_info, methods=["GET"],
                          summary="What this server serves: endpoints, limits, model")
        if not caption:
            async def no_caption() -> Response:
                return error_response(404, "no captioning model here: start the server "
                                      "with caption_checkpoint=... to caption images")

            app.add_api_route("/caption", no_caption, methods=["POST"], include_in_schema=False)
        app.add_exception_handler(HTTPException, http_error)
        app.add_exception_handler(RequestValidationError, validation_error)
        app.add_exception_handler(Exception, internal_error)

    def serve(self, host: str, port: int, log_level: str, graceful_s: float) -> None:
        """Start the manager and the inference workers, listen, and serve until SIGTERM or
        SIGINT; then finish the requests in flight and stop everything."""
        manager = self._init_manager(1)
        self.inference_workers = []
        try:
            # Bound after the manager (a forked process) started: it must not hold the
            # listening socket, or connections would queue, not be refused, at shutdown.
            sockets = [listen_socket(host, port)]
            for api in self.litapi_connector:
                self.inference_workers.extend(self.launch_inference_worker(api))
            self.verify_worker_status()
            self.app.response_queue_id = 0  # LitServe's id of this HTTP process' queue
            config = uvicorn.Config(self.app, log_level=log_level, lifespan="on",
                                    timeout_graceful_shutdown=int(graceful_s))
            stopped: list[int] = []
            # uvicorn replaces these while it runs and raises the signal again when it has
            # stopped: then they only note it, and the process ends normally.
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda signum, frame: stopped.append(signum))
            print(f"serving on http://{host}:{port} (docs: /docs)", flush=True)
            uvicorn.Server(config).run(sockets)
        finally:
            self._perform_graceful_shutdown(manager, {}, "normal")


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port); a ConfigError naming the address if it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        reason = e.strerror or str(e)
        raise ConfigError(f"cannot listen on {host}:{port} ({reason}); is another server "
                          "using the port? choose another with port=...") from None
    return sock


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404 and exc.detail == "Not Found":
        return error_response(404, f"{request.url.path}: no such endpoint (see /docs)")
    return error_response(exc.status_code, str(exc.detail))


async def validation_error(request: Request, exc: Exception) -> Response:
    # Bodies are checked by Gate first; this is FastAPI's own check, for what Gate lets by.
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return error_response(422, f"{where}: {first.get('msg')}" if where else str(first["msg"]))


async def internal_error(request: Request, exc: Exception) -> Response:
    return error_response(500, f"internal error ({type(exc).__name__}); see the server's log")

