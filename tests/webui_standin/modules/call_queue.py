"""Stand-in for modules/call_queue.py: the lock that serialises GPU work (a FIFOLock in the real one)."""

import threading

queue_lock = threading.Lock()


def wrap_queued_call(func):
    """Run ``func`` holding ``queue_lock``, as the real wrapper does."""

    def f(*args, **kwargs):
        with queue_lock:
            return func(*args, **kwargs)

    return f
