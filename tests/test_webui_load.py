"""Issue 10's bounded load test on 127.0.0.1: while one client sends the worst requests the limits allow,
another's small requests keep being answered (asserted: they all complete; not how fast)."""

from __future__ import annotations

import collections
import threading
import time

import pytest
import torch
from fastapi import FastAPI
from webuiapp_doubles import make_services

from lib_magicnaming.identity_library import IdentityLibrary
from lib_magicnaming.webui.api import PREFIX, build_router
from lib_magicnaming.webui.limits import Limits

pytestmark = pytest.mark.ui_stack

FROM_NAMES = f"{PREFIX}/identities/from-names"


@pytest.fixture()
def library(tmp_path):
    return IdentityLibrary(tmp_path / "mn" / "identities")


class FifoLock:
    """The WebUI's queue lock: waiting threads are served in arrival order (mirrors modules/fifo_lock.py of
    v1.10.1); counts how often it was taken. Called, it is its own context manager (Services.queue_lock)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._inner_lock = threading.Lock()
        self._pending: collections.deque[threading.Event] = collections.deque()
        self.entered = 0

    def acquire(self) -> bool:
        with self._inner_lock:
            if self._lock.acquire(False):
                self.entered += 1
                return True
            release_event = threading.Event()
            self._pending.append(release_event)
        release_event.wait()
        self._lock.acquire()
        self.entered += 1
        return True

    def release(self) -> None:
        with self._inner_lock:
            if self._pending:
                self._pending.popleft().set()
            self._lock.release()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def __call__(self):
        return self


def serve(app):
    """Run ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; returns (base URL, stop())."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]

    def stop():
        server.should_exit = True
        thread.join(10)

    return f"http://127.0.0.1:{port}", stop


def test_small_requests_keep_being_answered_while_another_client_sends_the_worst_allowed(library):
    """Bounded in count and time: one client sends the largest requests the limits allow (16 names of 200
    characters, each name holding the lock while the "text encoders" work; bodies over the limit, chunked;
    a 100,000-character name; a name of 200 characters that tokenises into 11 chunks), another lists
    identities and makes one-name identities. Every small request is answered (not: how fast)."""
    import httpx

    lock = FifoLock()

    def slow_encode(texts):
        time.sleep(0.005 * len(texts[0]) / 200)  # "GPU work" proportional to the text, under the lock
        return torch.randn(len(texts), 77, 2048)

    limits = Limits(request_bytes=1 << 20)
    services, _calls, _lock = make_services(library, encode_texts=slow_encode, lock=lock)
    app = FastAPI()
    app.include_router(build_router(services, limits=limits))
    base, stop = serve(app)
    worst_done, small_results, failures = [], [], []
    worst_names = {"names": [{"name": "a" * 200}] * 16, "overwrite": True}

    def worst_client():
        with httpx.Client(base_url=base, timeout=60) as http:
            for round_ in range(4):
                worst_done.append(http.post(FROM_NAMES, json={"name": "worst", **worst_names}).status_code)

                def over_limit():
                    for _ in range(40):
                        yield b" " * (64 << 10)

                worst_done.append(http.post(FROM_NAMES, content=over_limit(),
                                            headers={"content-type": "application/json"}).status_code)
                huge = {"name": f"h{round_}", "names": [{"name": "a" * 100_000}]}
                worst_done.append(http.post(FROM_NAMES, json=huge).status_code)
                many_chunks = {"name": f"c{round_}", "names": [{"name": "\U00010000" * 200}]}
                worst_done.append(http.post(FROM_NAMES, json=many_chunks).status_code)

    def small_client():
        with httpx.Client(base_url=base, timeout=60) as http:
            for index in range(12):
                small_results.append(http.get(f"{PREFIX}/identities").status_code)
                body = {"name": f"small{index}", "names": [{"name": "Ada"}]}
                small_results.append(http.post(FROM_NAMES, json=body).status_code)

    def run(target):
        try:
            target()
        except Exception as error:  # noqa: BLE001 - any failure of a client is the test's failure
            failures.append(error)

    try:
        threads = [threading.Thread(target=run, args=(fn,)) for fn in (worst_client, small_client)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads), "a client never got its answers"
    finally:
        stop()
    assert failures == []
    assert small_results == [200, 201] * 12  # every small request answered, none refused
    assert worst_done == [201, 413, 400, 400] * 4
    assert lock.entered == 4 * 16 + 12
