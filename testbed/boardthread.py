"""Virtual boards for synchronous callers (tests, provisioning scripts): a fleet runs in an
asyncio loop on a background thread, and ``call`` runs board operations in that loop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any, Awaitable, Callable

from vboard import group


class LoopThread:
    """An asyncio loop on its own thread."""

    def __init__(self, name: str = "vboards") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Awaitable[Any], timeout: float | None = 60) -> Any:
        future: Future = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def call_soon(self, fn: Callable[[], Any]) -> Any:
        async def wrapper():
            return fn()
        return self.call(wrapper())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class GroupThread:
    """``with GroupThread(spec) as fleet:`` boards running until the block ends."""

    def __init__(self, spec: group.GroupSpec) -> None:
        self.spec = spec
        self.runner = LoopThread()
        self.fleet: group.BoardGroup | None = None

    def __enter__(self) -> "GroupThread":
        try:
            self.fleet = self.runner.call(group.start_group(self.spec), timeout=120)
        except BaseException:
            self.runner.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.fleet is not None:
            self.runner.call(self.fleet.stop(), timeout=60)
        self.runner.close()

    def board(self, board_id: str | None = None):
        assert self.fleet is not None
        return self.fleet.boards[0] if board_id is None else self.fleet.by_id(board_id)

    def call(self, coro: Awaitable[Any], timeout: float | None = 60) -> Any:
        return self.runner.call(coro, timeout)
