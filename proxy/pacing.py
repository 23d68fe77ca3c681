"""Request starts paced per turn of the event loop, so streams in flight keep their rhythm
while a crowd of new requests arrives.

A request's start (Django's request, the middleware, authentication, limits, the body,
opening the upstream request) is CPU work of about a millisecond that runs without
yielding. When 64 requests arrive together, their starts all land in one turn of the
event loop, and the chunks of every stream already running wait behind them for tens of
milliseconds: a visible stutter. Let at most REQUEST_STARTS_PER_TURN start per turn and
the loop reads and relays those chunks between each few starts; the crowd's total work,
and its order (first come, first started), stay the same.

Waiting here costs no thread and holds nothing: a request that waits for its turn has
only its parsed head and body, and waits a few turns of the loop (each under a couple of
milliseconds with 4 a turn).

It is a trade, measured on a 2-core VM: in `make bench` (64 clients, each 3 streams back
to back, so starts overlap running streams) the gaps' p99 over direct's was 1.06x and
1.12x with 4 a turn, 1.22x with 8 and 1.49x with none; bench/ab.py (64 streams in
waves) gave TTFT p50 20-33% lower and TTFT p99 20-29% higher with 4 or 16 a turn than
with none (the last of a crowd starts after the chunks relayed in between).
"""

import asyncio
import weakref
from collections import deque

from django.conf import settings


class StartPacer:
    """At most `per_turn` callers of wait_turn() through per turn of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._started = 0  # in this turn
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._turn_scheduled = False

    async def wait_turn(self, per_turn: int) -> None:
        if not self._waiting and self._started < per_turn:
            self._started += 1
            self._schedule_turn()
            return
        future = self._loop.create_future()
        self._waiting.append(future)
        self._schedule_turn()
        await future

    @property
    def waiting(self) -> int:
        return sum(1 for future in self._waiting if not future.done())

    def _schedule_turn(self) -> None:
        # call_soon: runs in the loop's next turn, after it has polled the sockets.
        if not self._turn_scheduled:
            self._turn_scheduled = True
            self._loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._turn_scheduled = False
        self._started = 0
        per_turn = max(settings.REQUEST_STARTS_PER_TURN, 1)
        while self._waiting and self._started < per_turn:
            future = self._waiting.popleft()
            if future.done():  # cancelled: its client left
                continue
            future.set_result(None)
            self._started += 1
        if self._waiting or self._started:
            self._schedule_turn()


_pacers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StartPacer]" = (
    weakref.WeakKeyDictionary()
)


def pacer() -> StartPacer:
    """The running event loop's pacer."""
    loop = asyncio.get_running_loop()
    found = _pacers.get(loop)
    if found is None:
        found = _pacers[loop] = StartPacer(loop)
    return found


async def wait_turn() -> None:
    """Returns when this request may start: at once, unless REQUEST_STARTS_PER_TURN
    requests started in this turn of the loop already (0: never paced)."""
    per_turn = settings.REQUEST_STARTS_PER_TURN
    if per_turn > 0:
        await pacer().wait_turn(per_turn)
