"""Serving the dashboard with uvicorn: in the foreground (the CLI) or in a background thread
(the screenshots script and the browser tests), on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import uvicorn
from starlette.applications import Starlette

STARTUP_TIMEOUT_SECONDS = 60.0


def serve(app: Starlette, host: str, port: int) -> None:
    """Serve ``app`` on ``host:port`` until interrupted (Ctrl-C)."""
    uvicorn.run(app, host=host, port=port, log_level="info", lifespan="off", server_header=False)


class BackgroundServer:
    """``app`` served by uvicorn in a daemon thread, as a context manager: entering starts it
    and waits until it listens (``port`` 0 picks a free port; :attr:`url` says which), leaving
    stops it.

    Raises (on entering):
        RuntimeError: the server did not start within :data:`STARTUP_TIMEOUT_SECONDS`, or
            stopped (e.g. the port is taken).
    """

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", server_header=False)
        self.server = uvicorn.Server(config)
        self.host = host
        self.thread = threading.Thread(target=self.server.run, name="dashboard-server", daemon=True)

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the running server."""
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not self.server.started:  # poll the condition; the timeout only bounds a failure
            if not self.thread.is_alive():
                raise RuntimeError("the dashboard server stopped while starting (is the port taken?)")
            if time.monotonic() > deadline:
                self.server.should_exit = True
                raise RuntimeError(f"the dashboard server did not start within {STARTUP_TIMEOUT_SECONDS:g} s")
            time.sleep(0.01)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.server.should_exit = True
        self.thread.join()
