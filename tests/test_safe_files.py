"""open_regular_file: regular files only, refused before a byte is read, and never read past
the size they had when opened."""

from __future__ import annotations

import os
import socket

import pytest

from dacapo_store.safe_files import open_regular_file


def test_a_regular_file_reads_as_a_seekable_file(tmp_path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"0123456789")
    with open_regular_file(path) as file:
        assert file.read(4) == b"0123"
        assert file.seek(-2, os.SEEK_END) == 8 and file.read() == b"89"
        assert file.seek(0) == 0 and file.read() == b"0123456789"
        assert os.fstat(file.fileno()).st_size == 10


def test_reading_stops_at_the_size_the_file_had_when_opened(tmp_path) -> None:
    path = tmp_path / "growing"
    path.write_bytes(b"abc")
    with open_regular_file(path) as file:
        with open(path, "ab") as writer:
            writer.write(b"more that came later")
        assert file.read() == b"abc"
        assert file.seek(0, os.SEEK_END) == 3


def test_a_file_larger_than_max_bytes_is_refused(tmp_path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x" * 101)
    with open_regular_file(path, max_bytes=101) as file:
        assert len(file.read()) == 101
    with pytest.raises(ValueError, match=r"has 101 bytes, more than the 100 accepted"):
        open_regular_file(path, max_bytes=100)


def test_what_is_not_a_regular_file_is_refused_without_blocking(tmp_path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: a plain open would block forever
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "sock"))
        for path, kind in [
            ("/dev/zero", "a character device"),
            (fifo, "a FIFO"),
            (tmp_path, "a directory"),
        ]:
            with pytest.raises(ValueError, match=f"is {kind}"):
                open_regular_file(path)
        with pytest.raises(OSError):  # a socket cannot even be opened
            open_regular_file(tmp_path / "sock")
    with pytest.raises(FileNotFoundError):
        open_regular_file(tmp_path / "missing")


def test_a_symbolic_link_to_a_regular_file_is_followed(tmp_path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"linked")
    (tmp_path / "link").symlink_to(target)
    with open_regular_file(tmp_path / "link") as file:
        assert file.read() == b"linked"


def test_a_tiny_file_is_told_apart_from_a_zip_archive(tmp_path) -> None:
    """A seek before the start fails as on a real file (OSError), which zipfile expects."""
    import zipfile

    path = tmp_path / "tiny"
    path.write_bytes(b"PK\x03")
    with open_regular_file(path) as file:
        assert not zipfile.is_zipfile(file)
