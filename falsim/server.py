"""Running falsim: in the foreground (the CLI) or in a background thread (tests, the demo)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web
from nacl.signing import SigningKey, VerifyKey

from falsim.app import create_app, request_row, sim_stats
from falsim.config import SimConfig
from falsim.delivery import WebhookDispatcher
from falsim.engine import Simulator
from falsim.exceptions import FalsimError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def signing_key_for(seed: int | None) -> SigningKey:
    """A fresh signing key, or one derived from `seed` so restarts keep the same JWKS."""
    if seed is None:
        return SigningKey.generate()
    return SigningKey(hashlib.sha256(f"falsim-signing-key:{seed}".encode()).digest())


class _Running:
    """A started simulator: its app runner, engine and bound address."""

    def __init__(self, config: SimConfig, signing_key: SigningKey) -> None:
        self.config = config
        self.signing_key = signing_key
        self.runner: web.AppRunner | None = None
        self.sim: Simulator | None = None
        self.port = config.port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        dispatcher = WebhookDispatcher(self.config, self.signing_key)
        await dispatcher.start()
        self.sim = Simulator(self.config, dispatcher, loop)
        self.runner = web.AppRunner(
            create_app(self.sim, self.signing_key), access_log=None, handle_signals=False
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.host, self.config.port, backlog=1024)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.sim is not None:
            self.sim.reset()
            await self.sim.dispatcher.close()


async def _freeze_long_lived(interval: float = 5.0) -> None:
    """Move surviving objects out of the collector's sight every few seconds.

    100,000 outstanding requests are a million live objects; a full collection walking them all
    stalls the loop for hundreds of milliseconds, far behind the latency schedule. Requests hold
    no reference cycles, so reference counting still frees them after a reset. Only for a process
    of its own (the CLI): inside a test process it would pin everyone's cyclic garbage.
    """
    while True:
        await asyncio.sleep(interval)
        gc.freeze()


def _base_url(config: SimConfig, port: int) -> str:
    if config.public_url:
        return config.public_url.rstrip("/")
    host = "127.0.0.1" if config.host in ("0.0.0.0", "", "::") else config.host  # noqa: S104
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class SimServer:
    """falsim on a free port in a background thread with its own event loop.

    Use as a context manager; `port=0` (the default here) picks a free port.
    """

    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        base = config or SimConfig(port=0)
        self.config = base.updated(overrides, running=False) if overrides else base
        self.config.validate()
        self.signing_key = signing_key_for(self.config.seed)
        self._running = _Running(self.config, self.signing_key)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def verify_key(self) -> VerifyKey:
        """The public half of the webhook signing key."""
        return self.signing_key.verify_key

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return self._running.port

    @property
    def base_url(self) -> str:
        """Where the queue API answers, e.g. `http://127.0.0.1:PORT`."""
        return _base_url(self.config, self.port)

    @property
    def jwks_url(self) -> str:
        """Where the webhook key set is served."""
        return f"{self.base_url}/.well-known/jwks.json"

    @property
    def simulator(self) -> Simulator:
        """The engine (touch it only through `call`)."""
        if self._running.sim is None:
            raise FalsimError("simulator not started")
        return self._running.sim

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._running.start())
        except Exception as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._running.stop())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def start(self) -> SimServer:
        """Start serving; returns once the port is bound."""
        self._thread = threading.Thread(target=self._serve, name="falsim", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._error is not None:
            raise FalsimError(f"falsim failed to start: {self._error}") from self._error
        if not self._ready.is_set():
            raise FalsimError("falsim did not start within 30 s")
        logger.info("falsim serving at %s", self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving, close every socket and join the thread."""
        if self._loop is None or self._thread is None:
            return
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def call(self, fn: Callable[[Simulator], T]) -> T:
        """Run `fn(simulator)` on the server's loop and return its result."""
        if self._loop is None:
            raise FalsimError("simulator not started")

        async def run() -> T:
            return fn(self.simulator)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    def stats(self) -> dict[str, Any]:
        """The same JSON as GET /_sim/stats."""
        return self.call(sim_stats)

    def requests(self) -> list[dict[str, Any]]:
        """Every request's times, as GET /_sim/requests pages them."""
        return self.call(lambda sim: [request_row(sim, r) for r in sim.order])

    def configure(self, **changes: Any) -> SimConfig:
        """Change settings or faults while running (like POST /_sim/config)."""

        def apply(sim: Simulator) -> SimConfig:
            config = sim.config.updated(changes)
            sim.reconfigure(config)
            return config

        self.config = self.call(apply)
        return self.config

    def set_faults(self, **faults: Any) -> SimConfig:
        """Change fault rates while running."""
        return self.configure(faults=faults)

    def reset(self) -> None:
        """Forget every request and counter."""
        self.call(lambda sim: sim.reset())


async def serve_forever(config: SimConfig, announce: Callable[[str, str], None]) -> None:
    """Run falsim on this thread's loop until cancelled; `announce(base_url, jwks_url)` at start."""
    running = _Running(config, signing_key_for(config.seed))
    await running.start()
    freezer = asyncio.create_task(_freeze_long_lived())
    base = _base_url(config, running.port)
    announce(base, f"{base}/.well-known/jwks.json")
    try:
        await asyncio.Event().wait()
    finally:
        freezer.cancel()
        await running.stop()
