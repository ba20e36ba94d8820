"""Where commands write: output paths checked before any work, and claimed by one process at a time.

:func:`check_output_path` refuses, before anything is loaded, an output that cannot be written:
its folder is a file, it is a folder where a file goes (or the reverse), or nothing there is
writable. :func:`claim` holds an exclusive lock for the life of a run, so that two processes never
write one run folder, record file or results file; the kernel releases it when the process dies,
so a killed run never blocks the next one. :func:`publish_new` moves a finished file into place
only if nothing is there (no overwrite, also when another process races for the same name).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from blocksft.errors import BlocksftError


def check_output_path(path: str | Path, flag: str, *, kind: Literal["file", "folder"]) -> Path:
    """Refuse an output that cannot be created as a ``kind``; nothing is created.

    Args:
        path: the output (it may or may not exist).
        flag: names the option in the message (``--output``).
        kind: ``file`` or ``folder``: what the command writes there.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        BlocksftError: the path is the other kind, a parent is a file, or the nearest existing
            folder above it is not writable.
    """
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise BlocksftError(f"{flag} {path} is a folder; give a file name inside it")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise BlocksftError(f"{flag} {path} is a file; give a folder name")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise BlocksftError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BlocksftError(f"{flag} {path}: the folder {parent} is not writable; choose another path")
    return path


@contextmanager
def claim(lock_path: str | Path, what: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``lock_path`` while the block runs; refuse if another process has it.

    The lock is ``flock`` on a small file holding the owner's pid: the kernel drops it when the
    owner exits, however it exits, so a stale file never blocks anyone. The file is removed on the
    way out. Locks on network file systems are only as good as the file system's ``flock``.

    Args:
        lock_path: the lock file; missing folders above it are created, and removed again on the way
            out if the run left them empty.
        what: names the claimed output in the message (``run folder runs/a_logs``).

    Raises:
        BlocksftError: another live process holds the claim.
    """
    lock_path = Path(lock_path)
    created = _make_folders(lock_path.parent)
    try:
        with _flock(lock_path, what):
            yield lock_path
    finally:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:  # the run wrote something there: keep it
                break


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    missing.reverse()
    for path in missing:
        path.mkdir(exist_ok=True)
    return missing


@contextmanager
def _flock(lock_path: Path, what: str) -> Iterator[None]:
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BlocksftError(
                f"{what} is in use by another blocksft process (pid {owner}, lock {lock_path}); wait "
                "for it to finish, or choose another output"
            ) from None
        # The previous owner may have removed the file between our open and our lock: then the lock
        # is on a file nobody else can see, so take the one that is there now.
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(fd)


def publish_new(staged: str | Path, path: str | Path, flag: str) -> None:
    """Move the finished file ``staged`` to ``path``, which must not exist (atomic: a hard link).

    Raises:
        BlocksftError: ``path`` exists (another process got there first); ``staged`` is kept.
    """
    try:
        os.link(staged, path)
    except FileExistsError:
        raise BlocksftError(
            f"{flag} {path} appeared while this run was working (another process wrote it); nothing "
            "was replaced: pass --overwrite to replace it, or choose another name"
        ) from None
    os.unlink(staged)
