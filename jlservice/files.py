"""Files and directories root makes for others: never through a link planted in advance,
never a directory someone else could have filled, never torn by a crash."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def ensure_dir(path: Path, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Create `path` (and parents) with `mode` and `owner` (default: ours), or check the
    directory already there and give it that mode and owner.

    An existing one must be a plain directory, never a symlink (root would chown or chmod
    the target), owned by us or `owner`; one of ours must be writable by nobody else. Whoever
    else could write to it may have planted files in it (a token they know, a cookie secret)
    or links. Raises OSError whose strerror says what is wrong and what to do.
    """
    uid, gid = owner or (os.geteuid(), os.getegid())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, mode)
        made = True
    except FileExistsError:
        made = False
    except OSError as exc:
        why = f"cannot create {path}: {exc.strerror}; create it or choose another directory"
        raise OSError(exc.errno, why) from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise OSError(exc.errno, f"{path} is not a plain directory ({exc.strerror})") from None
    try:
        if not made:
            _check_existing(path, os.fstat(fd), uid)
        if owner is not None:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _check_existing(path: Path, st: os.stat_result, uid: int) -> None:
    me = os.geteuid()
    if st.st_uid not in (me, uid):
        raise PermissionError(
            errno.EPERM,
            f"{path} belongs to {_user_name(st.st_uid)}, not {_user_name(uid)}, who may have "
            "left files or links in it: remove it (jlservice makes a new one) or choose "
            "another directory",
        )
    if st.st_uid == me and st.st_mode & 0o022:
        raise PermissionError(
            errno.EPERM,
            f"{path} is writable by others (mode {st.st_mode & 0o7777:04o}), who may have left "
            f"files or links in it: check what is in it, then `chmod go-w {path}`",
        )


def write_atomic(
    path: Path,
    data: bytes,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
    durable: bool = True,
) -> None:
    """Write `data` so that readers see the old or the new content, never a mix; `durable`:
    and on disk before this returns (fsync), for what must survive a power cut."""
    import tempfile  # O_EXCL with a random name: nothing planted in advance is followed

    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    tmp = Path(name)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def holds(path: Path, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None) -> bool:
    """Whether `path` is already a regular file with exactly `data`, `mode` and `owner`: then
    it need not be written again (and a full disk does not stop a restart)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode:
            return False
        if owner is not None and (st.st_uid, st.st_gid) != owner:
            return False
        return st.st_size == len(data) and os.read(fd, len(data) + 1) == data
    finally:
        os.close(fd)


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
