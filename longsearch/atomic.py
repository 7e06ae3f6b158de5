"""Atomic file writes: a temporary file in the same directory, fsync, rename."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import faults


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        faults.point(path.name, "before")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)  # make the rename itself durable
    faults.point(path.name, "after")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ------------------------------------------------------------------ large outputs (directories, big files)
#
# A large output (an export directory, a GGUF copy, an eval directory) is built under a temporary name next to
# its destination and renamed onto it. The temporary's name carries its owner — this machine and this process —
# so that whatever a killed owner left (possibly gigabytes of copied weights) is recognised and removed by the
# next write of the same destination, and never what a live process on this or another machine is building.

_SEP = "~"  # not in host names
_log = logging.getLogger(__name__)


def _owner() -> str:
    return f"{socket.gethostname()}{_SEP}{os.getpid()}"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.tmp{_SEP}{_owner()}{_SEP}"


def _old_name(path: Path) -> Path:
    return path.parent / f".{path.name}.old{_SEP}{_owner()}"


def _dead_owner(tag: str) -> bool:
    """``tag`` = ``host~pid[~...]``: True only for a process of this machine that no longer runs."""
    parts = tag.split(_SEP)
    if len(parts) < 2 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """The temporaries a killed :func:`atomic_dir` / :func:`atomic_path` of ``path`` left on this machine (their
    owner no longer runs), by name: never what a live process, here or on another machine, is building."""
    path = Path(path)
    head = f".{path.name}.tmp{_SEP}"
    try:
        entries = sorted(path.parent.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [e for e in entries if e.name.startswith(head) and _dead_owner(e.name[len(head) :])]


def sweep_stale(path: str | os.PathLike) -> list[str]:
    """Clean up after a killed :func:`atomic_dir` / :func:`atomic_path` of ``path`` on this machine.

    Its temporaries are removed. A previous ``path`` it had moved aside to replace it is put back if ``path``
    is missing (the kill fell between the two renames), removed otherwise. Returns what was done, one line each.
    """
    path = Path(path)
    done: list[str] = []
    try:
        entries = list(path.parent.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return done
    old_head = f".{path.name}.old{_SEP}"
    for e in sorted(entries):
        if e.name.startswith(old_head) and _dead_owner(e.name[len(old_head) :]):
            if not (path.exists() or path.is_symlink()):
                os.replace(e, path)
                done.append(f"restored {path} from {e.name}, left by an interrupted replacement")
            else:
                _remove(e)
                done.append(f"removed {e.name}, left by an interrupted replacement")
    for e in stale_temporaries(path):
        _remove(e)
        done.append(f"removed {e.name}, left by an interrupted write")
    for line in done:
        _log.warning(line)
    return done


def destination_exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` exists once what a killed write of it left is cleaned up (:func:`sweep_stale`): the check
    to make before refusing or replacing an output, so that a restored previous output counts as existing."""
    path = Path(path)
    sweep_stale(path)
    return path.exists() or path.is_symlink()


def _fsync_dir(path: Path) -> None:
    """Make renames in directory ``path`` durable (where the OS allows opening a directory)."""
    try:
        dfd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _install(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` onto ``path``, an existing ``path`` (file or directory) moved aside first, then removed."""
    faults.point("dir", "before")
    old = None
    if path.exists() or path.is_symlink():
        old = _old_name(path)
        os.replace(path, old)
        faults.point("dir", "aside")
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        _remove(old)
    faults.point("dir", "after")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name next to ``path``; it becomes ``path`` only if the block succeeds.

    An existing ``path`` is replaced only then (the caller decides whether that is allowed); on error the
    temporary directory is removed and ``path`` is left as it was. What a killed earlier attempt left is swept
    first (:func:`sweep_stale`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    with atomic_dir_swept(path) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_dir_swept(path: str | os.PathLike) -> Iterator[Path]:
    """:func:`atomic_dir` for a caller that has already made ``path``'s parent and swept ``path``
    (:func:`sweep_stale`) itself, to check the destination in between."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700
        yield tmp
        _install(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file path next to ``path`` for a writer that opens files by name (a GGUF writer); the file
    becomes ``path`` (after fsync) only if the block succeeds. Swept like :func:`atomic_dir`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _install(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
