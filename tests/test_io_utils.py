"""Atomic writes: all or nothing, and the usual permissions."""
import os
import stat

import pytest

from segvit_rt.io_utils import atomic_dir, atomic_path, sha256_file


def test_atomic_path_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "w.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["w.bin"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["w.bin"]


def test_atomic_dir_keeps_old_directory_on_failure(tmp_path):
    target = tmp_path / "engine"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("parity failed")
    assert (target / "a").read_text() == "1" and os.listdir(tmp_path) == ["engine"]


def test_atomic_dir_replaces_an_existing_directory_whole(tmp_path):
    target = tmp_path / "engine"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("2")
    assert sorted(os.listdir(target)) == ["a"] and (target / "a").read_text() == "2"
    assert os.listdir(tmp_path) == ["engine"]


def test_atomic_dir_puts_the_old_directory_back_if_the_swap_fails(tmp_path, monkeypatch):
    target = tmp_path / "engine"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(src)
        if len(calls) == 2:  # the new directory moving in: interrupted
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("2")
    assert len(calls) == 3  # aside, (interrupted) in, back
    assert (target / "a").read_text() == "1" and os.listdir(tmp_path) == ["engine"]


def test_atomic_dir_through_a_symlink_replaces_the_directory_it_points_to(tmp_path):
    real = tmp_path / "real"
    with atomic_dir(real) as tmp:
        (tmp / "a").write_text("1")
    (tmp_path / "link").symlink_to(real)
    with atomic_dir(tmp_path / "link") as tmp:
        (tmp / "a").write_text("2")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "link" / "a").read_text() == "2"
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_umask_permissions_not_owner_only(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "f") as tmp:
            tmp.write_bytes(b"x")
        with atomic_dir(tmp_path / "d"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o777 & ~umask


def test_sha256_matches_known_digest(tmp_path):
    (tmp_path / "abc").write_bytes(b"abc")
    assert sha256_file(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
