"""vLLM's batch as its clients see it: at most `max_num_seqs` requests run at once, the
others wait first come, first served until a running one finishes, and each token takes
longer the fuller the batch is.

Measured on vLLM 0.32 with `--max-num-seqs 4`: a 5th concurrent request waits, counted by
`vllm:num_requests_waiting` while `vllm:num_requests_running` stays at 4, and its time to
first token includes the wait. A request holds its slot from before its first token until
its last, or until its client disconnects (vLLM aborts it and frees the slot at once); a
client that leaves while waiting leaves the queue and never runs.

The fast path (a free slot, nobody waiting) is a few integer operations and no await:
the simulator is the upstream in benchmarks at 256 streams and must cost little.
"""

import asyncio
import collections
import contextlib

from devtools.simulator.config import SimulatorConfig


class Batch:
    """The running requests of one simulated vLLM and the queue of those waiting."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.max_num_seqs = config.max_num_seqs  # at least 1 (SimulatorConfig checks)
        self._token_delay = config.token_delay
        self._slowdown = config.batch_slowdown
        self.running = 0  # requests holding a slot
        # One future per waiting request, oldest first, resolved when it is handed a slot.
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        # Simulator-only, for tests of the gateway's admission control (GET /sim/stats).
        self.peak_running = 0  # most requests running at once since start or reset
        self.admitted = 0  # requests that got a slot since start or reset

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def admit(self) -> None:
        """Take a slot, waiting in the queue (FCFS) while all of them are taken.

        Cancelled while waiting (the client left), the request leaves the queue having
        never run. Once this returns, the caller must release() the slot exactly once.
        """
        # A newcomer never overtakes the queue: a freed slot goes to the oldest waiter.
        if self.running < self.max_num_seqs and not self._queue:
            self._start_one()
            return
        slot = asyncio.get_running_loop().create_future()
        self._queue.append(slot)
        try:
            await slot
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():
                # Handed a slot in the same loop iteration as the client left: the slot
                # is counted as ours already, so pass it on; we never ran.
                self.admitted -= 1
                self.release()
            else:
                # Still queued, unless release() already dropped it as cancelled.
                with contextlib.suppress(ValueError):
                    self._queue.remove(slot)
            raise

    def release(self) -> None:
        """Free a slot (the request finished or was aborted); the oldest waiter gets it."""
        self.running -= 1
        while self._queue:
            slot = self._queue.popleft()
            # A waiter cancelled in this loop iteration has not left the queue yet.
            if not slot.done():
                self._start_one()
                slot.set_result(None)
                return

    def _start_one(self) -> None:
        self.running += 1
        self.admitted += 1
        if self.running > self.peak_running:
            self.peak_running = self.running

    @property
    def fixed_token_delay(self) -> float | None:
        """The token delay when it does not depend on the batch (no slowdown), else None."""
        return self._token_delay if self._slowdown == 0 else None

    def token_delay(self) -> float:
        """Seconds before the next token, with as many requests running as now
        (config.token_delay * (1 + config.batch_slowdown * (running - 1)))."""
        return self._token_delay * (1.0 + self._slowdown * (self.running - 1))

    def stats(self) -> dict[str, int]:
        return {
            "running": self.running,
            "waiting": self.waiting,
            "peak_running": self.peak_running,
            "admitted": self.admitted,
        }

    def reset_stats(self) -> None:
        """Start a new window: the peak is what runs now, nobody admitted yet."""
        self.peak_running = self.running
        self.admitted = 0
