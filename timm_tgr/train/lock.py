"""One trainer per run folder: :class:`RunLock` holds an exclusive lock on ``<run>/.lock`` for the whole run.

Two ``train_tgr.py`` started on the same ``--output`` / ``--experiment`` would both find the folder free and
overwrite each other's checkpoints; the second one instead stops before it writes anything, naming the running
one (its process id, host, start time and command, which the lock file holds). The lock is the kernel's
(``fcntl.flock``): it goes with the process, so a run killed with ``kill -9`` leaves no stale lock behind
(the ``.lock`` file it leaves is taken by the next run).
"""
import os
import socket
import sys
import time
from typing import Optional

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

__all__ = ['RunLock', 'RunFolderBusy', 'LOCK_NAME']

LOCK_NAME = '.lock'


class RunFolderBusy(RuntimeError):
    """Another run holds the run folder."""


class RunLock:
    """The exclusive lock of a run folder (``acquire`` / ``release``; also a context manager)."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.fd: Optional[int] = None

    def acquire(self) -> 'RunLock':
        if fcntl is None:
            return self._acquire_exclusive_create()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read(fd)
                os.close(fd)
                raise RunFolderBusy(self._busy(holder)) from None
            try:  # the file may have been removed by the run that held it: lock the file now at the path
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, _holder().encode())
        self.fd = fd
        return self

    def _acquire_exclusive_create(self) -> 'RunLock':
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            with open(self.path) as f:
                holder = f.read().strip()
            raise RunFolderBusy(self._busy(holder) + f' (if no run is using it, remove {self.path})') from None
        os.write(fd, _holder().encode())
        self.fd = fd
        return self

    def _busy(self, holder: str) -> str:
        return (f'the run folder {self.folder} is in use by another train_tgr.py run ({holder or "unknown"}): two runs '
                f'in one folder would overwrite each other\'s checkpoints. Wait for it to end (then --resume it), or '
                f'start this run in another folder (another --experiment or --output).')

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.remove(self.path)  # while still holding the lock: a waiting run then locks a fresh file
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> 'RunLock':
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder() -> str:
    command = ' '.join(sys.argv) if sys.argv and sys.argv[0] else 'python'
    return (f'pid {os.getpid()} on {socket.gethostname()}, started {time.strftime("%Y-%m-%d %H:%M:%S")}, '
            f'command: {command[:300]}')


def _read(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 1000).decode(errors='replace').strip()
    except OSError:
        return ''
