"""Accounts from the password database, and whether an account may execute a file."""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str

    @property
    def is_root(self) -> bool:
        return self.uid == 0


def lookup(name: str) -> Account | None:
    try:
        entry = pwd.getpwnam(name)
    except (KeyError, ValueError):  # ValueError: an embedded NUL
        me = current()
        return me if name == me.name else None  # the nameless uid jlservice runs as
    return _account(entry)


def current() -> Account:
    uid = os.geteuid()
    try:
        return _account(pwd.getpwuid(uid))
    except KeyError:  # a uid with no passwd entry (containers run with --user 12345)
        return Account(
            name=str(uid),
            uid=uid,
            gid=os.getegid(),
            groups=tuple(sorted(set(os.getgroups()) | {os.getegid()})),
            home=os.environ.get("HOME") or "/",
            shell="/bin/sh",
        )


def _account(entry: pwd.struct_passwd) -> Account:
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
    return Account(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        groups=groups,
        home=entry.pw_dir,
        shell=entry.pw_shell or "/bin/sh",
    )


FIRST_PERSON_UID, NOBODY_UID = 1000, 65534  # Debian's UID_MIN, and nobody


def people(but: int) -> list[str]:
    """Accounts people may use, other than root and uid `but`: a uid from 1000 (nobody
    aside), or a login shell (one /etc/shells lists, not nologin or false)."""
    shells = _login_shells()
    return [
        entry.pw_name
        for entry in pwd.getpwall()
        if entry.pw_uid not in (0, but)
        and (FIRST_PERSON_UID <= entry.pw_uid < NOBODY_UID or entry.pw_shell in shells)
    ]


def _login_shells() -> set[str]:
    try:
        with open("/etc/shells") as f:
            lines = [line.strip() for line in f]
    except OSError:
        return set()
    return {
        line
        for line in lines
        if line.startswith("/") and os.path.basename(line) not in ("nologin", "false")
    }


def _allowed(st: os.stat_result, account: Account, bit: int) -> bool:
    """bit is the 'other' permission bit (4 read, 1 execute); same test the kernel makes."""
    if account.is_root:
        return bit != 1 or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    if st.st_uid == account.uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid in account.groups:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def execute_denied(path: str | os.PathLike[str], account: Account) -> str | None:
    """Why `account` cannot execute `path` (following symlinks and a #! interpreter), or None.

    The check is made from the permission bits, so that a root supervisor can tell before
    launching that the target user would get EACCES (the classic case: a venv made from a
    Python that lives under /root, which is mode 0700).
    """
    return _denied(Path(path), account, depth=0)


def _denied(path: Path, account: Account, depth: int) -> str | None:
    if not path.is_absolute():
        return f"{path} is not an absolute path"
    # Every directory on the way, before and after resolving symlinks, must be searchable.
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        return f"{path} cannot be resolved: {exc}"
    for candidate in (path, real):
        for parent in reversed(candidate.parents):
            try:
                st = parent.stat()
            except OSError as exc:
                return f"{parent}: {exc.strerror}"
            if not _allowed(st, account, 1):
                return f"{parent} is mode {stat.S_IMODE(st.st_mode):04o}, owned by uid {st.st_uid}"
    try:
        st = real.stat()
    except OSError as exc:
        return f"{real}: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{real} is not a regular file"
    if not _allowed(st, account, 1):
        return f"{real} is not executable by {account.name} (mode {stat.S_IMODE(st.st_mode):04o})"
    interpreter = _shebang_interpreter(real)
    if interpreter is None:
        return None
    if depth >= 4:  # Linux follows at most 4 levels of #! interpreters, then fails with ELOOP
        return f"{path}: too many levels of #! interpreters"
    if not _allowed(st, account, 4):
        return f"{real} is a script that {account.name} cannot read"
    return _denied(Path(interpreter), account, depth + 1)


def _shebang_interpreter(path: Path) -> str | None:
    try:
        head = read_head(path, 256)
    except OSError:
        return None
    if head is None or not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].strip()
    if not line:
        return None
    return os.fsdecode(line.split()[0])


def read_head(path: str | os.PathLike[str], size: int) -> bytes | None:
    """The first `size` bytes of `path` if it is a regular file, else None.

    Root reads it, maybe in a directory the lab user can write to and swap it in at any
    moment for a FIFO (an open would block) or a link to a device (an open can have effects).
    So it is first opened with O_PATH, which does neither, and read only once fstat says it
    is a regular file, by reopening that same inode through /proc/self/fd.
    """
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        data = os.open(f"/proc/self/fd/{fd}", flags)
    finally:
        os.close(fd)
    try:
        return os.read(data, size)
    finally:
        os.close(data)


def others_can_change(path: str | os.PathLike[str]) -> str | None:
    """Who besides root (and us) could change what `path` names, or None.

    Root reads files such as the TLS key and hands their content to the lab user: if that
    user could swap an entry on the way (in a directory it owns or may write to), it would
    choose what root reads, another service's key say. Checked on the way as written and
    after resolving links; in a sticky directory (/tmp), only an entry of ours is safe.
    """
    trusted = {0, os.geteuid()}
    for candidate in (Path(path), Path(os.path.realpath(path))):
        for entry in (candidate, *candidate.parents[:-1]):
            try:
                where = os.stat(entry.parent)
                owner = os.lstat(entry).st_uid
            except OSError:
                continue  # missing: reading it says so
            writer = _writer(where, trusted)
            if writer and not (where.st_mode & stat.S_ISVTX and owner in trusted):
                return f"{entry.parent} is writable by {writer}"
    return None


def _writer(st: os.stat_result, trusted: set[int]) -> str | None:
    """Who other than `trusted` uids may write to the directory `st`, or None."""
    if st.st_uid not in trusted:
        return _name(st.st_uid)
    if st.st_mode & 0o002:
        return "everyone"
    if st.st_mode & 0o020 and st.st_gid != 0:
        return f"group {st.st_gid}"
    return None


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
