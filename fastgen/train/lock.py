"""An exclusive lock on a run folder, so two trainings never write the same checkpoint.

The lock is a file created with O_CREAT | O_EXCL (atomic on local file systems) holding
"pid hostname". It is removed when the run ends (normally or by an exception, Ctrl-C included).
A lock left by a killed process is stale: on the same host, a pid that no longer exists is taken
over; a lock from another host, or from a live process, is refused with a one-line error naming
the file (delete it by hand if you know no run is active).
"""
import contextlib
import os
import socket

from fastgen.train.checkpoint import CheckpointError


def lock_path(checkpoint):
    folder, name = os.path.split(os.path.abspath(checkpoint))
    return os.path.join(folder, f".{name}.lock")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _owner(path):
    try:
        with open(path) as f:
            pid, _, host = f.read().strip().partition(" ")
        return int(pid), host
    except (OSError, ValueError):
        return None, None


def acquire(checkpoint):
    """Take the lock of the run whose checkpoint is `checkpoint`; returns the lock file path."""
    path = lock_path(checkpoint)
    me = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid, host = _owner(path)
            if pid is not None and host == socket.gethostname() and not _pid_alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # stale: its process is gone
                continue
            who = f"pid {pid} on {host}" if pid is not None else "an unknown process"
            raise CheckpointError(f"{os.path.dirname(path)} is in use by another training ({who}; lock file "
                                  f"{path}): wait for it, or delete the lock file if no run is active") from None
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return path
    raise CheckpointError(f"cannot take the lock {path} (it keeps reappearing)")


def release(path):
    with contextlib.suppress(FileNotFoundError):
        if _owner(path)[0] == os.getpid():
            os.unlink(path)


@contextlib.contextmanager
def run_lock(checkpoint, enabled=True):
    """Hold the run folder's lock for the enclosed block (a no-op when not enabled, e.g. ranks > 0)."""
    if not enabled:
        yield None
        return
    path = acquire(checkpoint)
    try:
        yield path
    finally:
        release(path)
