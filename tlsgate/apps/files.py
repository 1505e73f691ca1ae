"""Opening an app's files: regular files only, and never more read than the limit allows.

`tlsgate import /dev/zero` read until MemoryError, a FIFO would block the
open, and a 200 MB XML file was read whole before its size was checked. Here
a file is opened without blocking (O_NONBLOCK: a FIFO opens at once instead of
waiting for a writer), checked by fstat on the descriptor actually opened (so a
symlink, also one inside a source tree, is judged by what it points at, with
no window between check and read), refused unless it is a regular file, and
read only up to the limit plus one byte (a file that grows after the check is
still caught).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from tlsgate.apps.model import MAX_INPUT, AppFormatError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def open_regular(path: Path) -> tuple[BinaryIO, int]:
    """An open regular file and its size, or AppFormatError naming what the path is instead."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path (from a manifest's @xml/ name)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise AppFormatError(f"{path}: cannot open: {reason}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
            target = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
            raise AppFormatError(f"{path}{target}: is {kind}; tlsgate reads only regular files")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0), info.st_size
    except BaseException:
        os.close(fd)
        raise


def read_file(path: Path, limit: int = MAX_INPUT) -> bytes:
    """A whole regular file of at most `limit` bytes; refused before reading when it says it is larger."""
    stream, size = open_regular(path)
    with stream:
        if size > limit:
            raise AppFormatError(f"{path}: {size} bytes, larger than the {limit >> 20} MiB tlsgate reads")
        data = _read_up_to(stream, size + 1)  # one read for what fstat said, one byte more to see it did not grow
        if len(data) > size:
            data += _read_up_to(stream, limit + 1 - len(data))
    if len(data) > limit:
        raise AppFormatError(f"{path}: grew beyond {limit >> 20} MiB while being read")
    return data


def read_head(stream: BinaryIO, size: int) -> bytes:
    """The first `size` bytes (fewer if the file is shorter), the stream left where it was."""
    position = stream.tell()
    try:
        stream.seek(0)
        return _read_up_to(stream, size)
    finally:
        stream.seek(position)


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes: a regular file answers in one read; the loop is for the short reads POSIX allows."""
    data = stream.read(size)
    if len(data) >= size or not data:
        return data
    chunks, left = [data], size - len(data)
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
