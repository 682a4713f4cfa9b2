import os
import stat

import pytest
import torch

from lib_magicnaming.atomic import write_atomic, write_bytes_atomic
from lib_magicnaming.identity import Identity, IdentityLibrary


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_get_the_users_umask_not_owner_only(tmp_path, umask_022):
    target = write_bytes_atomic(tmp_path / "sub" / "a.json", b"{}")
    assert target.read_bytes() == b"{}"
    assert _mode(target) == 0o644


def test_identity_files_get_the_users_umask(tmp_path, umask_022):
    library = IdentityLibrary(tmp_path)
    info = library.save(Identity(name="alice", embedding=torch.randn(8, 2048), origin={"kind": "imported"}))
    assert _mode(info.path) == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def half_write(temp):
        temp.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, half_write)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
