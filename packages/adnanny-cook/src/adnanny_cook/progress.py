"""The cook progress bar: it moves per finished teacher call, not per checkpointed chunk.

Why: against a slow teacher a chunk of 64 inputs x k candidates can take many minutes; a bar that moves only when a
chunk is written sat at 0/20 while the server was busy (issue 11), and showed nothing of retries. This bar counts
calls (answered, cached or failed) as they finish, estimates the total from the calls per input seen so far, and
shows the inputs checkpointed, the retries and the calls waiting past `timeout_s` on a busy server.
"""

from __future__ import annotations

from typing import IO, Any

__all__ = ["CookProgress"]

_FINISHED = ("done", "cached", "failed")


class CookProgress:
    """A tqdm bar over teacher calls; feed it the clients' events (`TeacherClient.add_listener(bar.on_event)`)
    and `chunk_done(n_inputs, kept=, dropped=)` after each checkpoint."""

    def __init__(self, *, inputs_total: int, inputs_done: int, calls_per_input: float, clients: list[Any],
                 desc: str, disable: bool = False, file: IO[str] | None = None, mininterval: float = 0.2) -> None:
        from tqdm import tqdm

        self.inputs_total, self.inputs_done = inputs_total, inputs_done
        self._inputs_run = 0                     # inputs finished by this process (resumed ones excluded)
        self._guess = max(calls_per_input, 1.0)
        self.calls = 0
        self.clients = [c for c in clients if c is not None]
        self.kept = self.dropped = 0
        self.bar = tqdm(total=self._estimate(), unit="call", desc=desc, disable=disable, dynamic_ncols=True,
                        file=file, mininterval=mininterval)
        self._postfix()

    def _estimate(self) -> int:
        """Calls so far + the inputs left x calls per input (observed at the last checkpoint, else the guess)."""
        left = max(self.inputs_total - self.inputs_done, 0)
        if self._inputs_run:  # at a checkpoint every call of the finished inputs has returned
            est = self.calls + left * self.calls / self._inputs_run
        else:
            est = left * self._guess
        return max(self.calls, int(round(est)))

    def _postfix(self) -> None:
        retries = sum(c.stats.retries for c in self.clients)
        waiting = sum(c.stats.waiting for c in self.clients)
        self.bar.set_postfix(inputs=f"{self.inputs_done}/{self.inputs_total}", retries=retries, waiting=waiting,
                             kept=self.kept, dropped=self.dropped, refresh=False)

    def on_event(self, event: str) -> None:
        """A client event ("done", "cached", "failed" finish a call; "retry" and "slow" update the counters)."""
        if event in _FINISHED:
            self.calls += 1
            if self.calls > self.bar.total:
                self.bar.total = self._estimate() + 1
            self._postfix()
            self.bar.update(1)
        else:
            self._postfix()
            self.bar.refresh()

    def chunk_done(self, n_inputs: int, *, kept: int = 0, dropped: int = 0) -> None:
        """A chunk was checkpointed: count its inputs and re-estimate the total from the calls per input so far."""
        self.inputs_done += n_inputs
        self._inputs_run += n_inputs
        self.kept += kept
        self.dropped += dropped
        self.bar.total = self._estimate()
        self._postfix()
        self.bar.refresh()

    def close(self) -> None:
        self.bar.total = max(self.calls, 1) if self.inputs_done >= self.inputs_total else self.bar.total
        self._postfix()
        self.bar.close()
