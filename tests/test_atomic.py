import os
import stat

import pytest
import torch

from lib_magicnaming.atomic import write_atomic, write_bytes_atomic
from lib_magicnaming.identity import Identity
from lib_magicnaming.identity_library import IdentityLibrary


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


@pytest.mark.parametrize("writer", ["write_atomic", "identity library"])
def test_the_temp_file_is_synced_to_disk_before_it_gets_its_name(tmp_path, monkeypatch, writer):
    events = []
    real_fsync, real_replace, real_link = os.fsync, os.replace, os.link

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        return real_fsync(fd)

    def named(kind, real):
        def call(source, target):
            events.append((kind, os.stat(source).st_ino))
            return real(source, target)

        return call

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", named("name", real_replace))
    monkeypatch.setattr(os, "link", named("name", real_link))
    if writer == "write_atomic":
        write_bytes_atomic(tmp_path / "a.bin", b"data")
    else:
        IdentityLibrary(tmp_path).save(Identity("alice", torch.randn(8, 2048), {"kind": "imported"}))
    (temp_file,) = {inode for kind, inode in events if kind == "name"}
    assert events.index(("fsync", temp_file)) < events.index(("name", temp_file))
