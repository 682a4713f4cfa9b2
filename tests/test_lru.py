"""The one small LRU map (photo embeddings in the encoder, identity embeddings and messages in the WebUI)."""

import threading

from lib_magicnaming.lru import LRUCache


def test_the_least_recently_used_entry_goes_first():
    cache: LRUCache[str, int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3) and len(cache) == 2
    cache.put("a", 10)  # putting again replaces and refreshes
    cache.put("d", 4)
    assert (cache.get("a"), cache.get("c"), cache.get("d")) == (10, None, 4)
    cache.clear()
    assert (cache.get("a"), cache.get("d"), len(cache)) == (None, None, 0)


def test_capacity_zero_keeps_nothing():
    cache: LRUCache[str, int] = LRUCache(0)
    cache.put("a", 1)
    assert cache.get("a") is None and len(cache) == 0


def test_threads_never_overfill_it():
    cache: LRUCache[int, int] = LRUCache(16)

    def work(start: int) -> None:
        for key in range(start, start + 500):
            cache.put(key, key)
            cache.get(key - 3)

    threads = [threading.Thread(target=work, args=(i * 1000,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 16
