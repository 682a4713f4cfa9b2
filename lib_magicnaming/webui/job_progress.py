"""Progress of long work outside a generation, reported where the WebUI reports its own jobs.

Measuring a checkpoint's name space encodes a thousand names while the WebUI's queue waits: minutes on a CPU.
:func:`webui_job` shows it as the WebUI shows its own work (v1.10.1 ``modules/shared_state.py`` and the
console bars of ``modules/shared_total_tqdm.py``; Forge keeps both):

- ``shared.state``: ``begin(job)``, ``job_count`` the steps, ``job_no`` the steps done, ``textinfo`` what is
  being done, ``end()``: what ``GET /sdapi/v1/progress`` answers an API client while it waits;
- a tqdm bar on the console (``shared.progress_print_out``; none with ``--disable-console-progressbars``);
- the caller's own progress (the tab's ``gr.Progress``), called as ``progress(fraction, desc=text)``.

The WebUI's Interrupt (``shared.state.interrupted``; ``POST /sdapi/v1/interrupt``) stops the work at its
next step: the reporter raises :class:`~lib_magicnaming.errors.Interrupted`, so nothing half-done is kept.
The caller holds the WebUI's queue lock, so no generation's progress is overwritten.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from lib_magicnaming.errors import Interrupted

Progress = Callable[..., Any]
"""``progress(fraction, desc=text)``, as gradio's ``gr.Progress`` is called."""


def no_progress(*_args: Any, **_kwargs: Any) -> None:
    """The progress callback when none is given (gr.Progress must not be tested for truth: it has a len)."""


@contextmanager
def caller_progress_only(job: str, total: int, progress: Progress) -> Iterator[Progress]:
    """Where no WebUI runs: the caller's progress as it is."""
    yield progress


@contextmanager
def webui_job(job: str, total: int, progress: Progress) -> Iterator[Progress]:
    """A WebUI job of ``total`` steps named ``job``; yields the reporter to call after each step (module
    docstring). The state and the bar end however the work ends."""
    import tqdm
    from modules import shared

    state = shared.state
    state.begin(job=job)
    state.job_count = total
    disabled = bool(getattr(shared.cmd_opts, "disable_console_progressbars", False))
    bar = tqdm.tqdm(total=total, desc=job, file=getattr(shared, "progress_print_out", None), disable=disabled)

    def report(fraction: float, desc: str | None = None) -> None:
        if state.interrupted:
            raise Interrupted(f"{job} was interrupted (the WebUI's Interrupt); nothing of it was kept")
        done = min(total, max(0, round(float(fraction) * total)))
        state.job_no = done
        state.textinfo = desc
        bar.update(done - bar.n)
        progress(fraction, desc=desc)

    try:
        yield report
    finally:
        bar.close()
        state.end()
