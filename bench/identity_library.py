"""Print how long the identity library takes to list, load and save with 1,000 identities in its folder.

Usage, from the repository root: python -m bench.identity_library [COUNT]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from lib_magicnaming.identity import Identity
from lib_magicnaming.identity_file import encode_identity_file
from lib_magicnaming.identity_library import IdentityLibrary


def main(count: int = 1000) -> None:
    """Build ``count`` identity files, then time list(), one load(), load_by_hash() and one save()."""
    origin = {"kind": "sampled", "encoder_hash": "0" * 10, "seed": 0, "scale": 1.0}
    with tempfile.TemporaryDirectory() as folder:
        library = IdentityLibrary(folder)
        generator = torch.Generator().manual_seed(0)
        for index in range(count):
            identity = Identity(f"person-{index:05d}", torch.randn(8, 2048, generator=generator), origin)
            (Path(folder) / f"{identity.key}.safetensors").write_bytes(encode_identity_file(identity))

        started = time.perf_counter()
        infos = library.list()
        listed = time.perf_counter() - started
        started = time.perf_counter()
        library.load(infos[count // 2].name)
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        library.load_by_hash(infos[-1].short_hash)
        by_hash = time.perf_counter() - started
        started = time.perf_counter()
        library.save(Identity("new-one", torch.randn(8, 2048), origin))
        saved = time.perf_counter() - started

    print(f"identities: {count}")
    print(f"list():        {listed * 1000:8.1f} ms  ({listed / count * 1e6:.0f} us per file)")
    print(f"load():        {loaded * 1000:8.1f} ms")
    print(f"load_by_hash():{by_hash * 1000:8.1f} ms  (lists the folder, then loads one)")
    print(f"save():        {saved * 1000:8.1f} ms  (with fsync)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
