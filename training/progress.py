"""Progress of long stages (``train``, ``likeness``): a tqdm bar on a terminal, plain lines in a log.

When stderr is not a terminal (a log file, a cluster job) a bar's carriage-return redraws would fill the
log, so plain lines are printed instead, at most every PLAIN_PROGRESS_EVERY_S and at the end. Only rank 0
shows progress; other ranks show nothing.
"""

from __future__ import annotations

import sys
import time

from training.distributed import Place

PLAIN_PROGRESS_EVERY_S = 30.0
"""Without a terminal progress is a plain line at most this often."""


class Progress:
    """``done`` of ``total`` steps (``initial`` done already): a bar named ``desc`` or plain lines."""

    def __init__(self, total: int, desc: str, place: Place, *, initial: int = 0, stage: str | None = None):
        from tqdm import tqdm

        interactive = place.is_main and sys.stderr.isatty()
        self.bar = tqdm(initial=initial, total=total, desc=desc, disable=not interactive, leave=False)
        self.plain = place.is_main and not interactive
        self.desc, self.total, self.done = desc, total, initial
        self.prefix = f"{stage}: " if stage else ""
        self.last_plain: float | None = None

    def advance(self) -> None:
        """One more step done (moves the bar)."""
        self.done += 1
        self.bar.update(1)

    def update(self) -> None:
        """One more step done, with the plain line ``<stage>: <desc> <done>/<total>`` when one is due."""
        self.advance()
        self.say(f"{self.prefix}{self.desc} {self.done}/{self.total}", final=self.done == self.total)

    def postfix(self, **values) -> None:
        """Values shown after the bar (e.g. the loss)."""
        self.bar.set_postfix(**values)

    def say(self, line: str, *, final: bool = False) -> None:
        """Print ``line`` when output goes to a log and a line is due (or ``final``: the last one)."""
        if not self.plain:
            return
        now = time.monotonic()
        if self.last_plain is None or now - self.last_plain >= PLAIN_PROGRESS_EVERY_S or final:
            self.last_plain = now
            print(line, file=sys.stderr)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()
