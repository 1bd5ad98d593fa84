"""The warm parent: JupyterLab's interpreter, already past its imports, forking servers.

Runs as the JupyterLab user with JupyterLab's exact environment, started by the keeper as
`PYTHON -c BOOTSTRAP SPEC` with this file's text on stdin, so it needs only the standard
library and JupyterLab's own packages — not jlservice, which that interpreter may not have.

It notes the paths where a change would make it stale — their state (a snapshot), and an
inotify watch on them — as the lab user, so that root never stats, scans or watches a path
it names; imports the heavy modules; starts no thread and no event loop; says it is ready;
then waits. For each request (JSON + the server's output pipe as SCM_RIGHTS) it forks an
intermediate that applies the launch (cwd, umask, output), forks the server and exits: the
server is then re-parented to the supervisor, a child subreaper, which reaps it and its
orphans. Once the intermediate is reaped the warm parent reports the server's pid and is
ready for the next request. If its paths changed since it started, it answers "stale"
instead of forking, and exits with EXIT_STALE once a change it is told of settles, or when
the supervisor asks it to check (each time JupyterLab is ready). EOF on the socket (the
supervisor is gone) ends it.
"""

import contextlib
import ctypes
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
# IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE |
# IN_DELETE_SELF | IN_MOVE_SELF, on directories only (IN_ONLYDIR)
IN_CHANGES = 0x2 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800 | 0x01000000
_libc = ctypes.CDLL(None, use_errno=True)
MAX_MESSAGE = 1 << 16
MAX_FDS = 1 + 4  # the output pipe, and JupyterLab's listening socket (start/listening.py)
MAX_ENTRIES = 20000  # per snapshot: a huge directory must not stall each warm start
STALE_DEBOUNCE_S = 1.0  # pip writes many files: look once they settle
EXIT_STALE = 3  # the supervisor's keeper knows this status: replaced, not broken


def send(sock, **message):
    sock.send(json.dumps(message).encode())


def watched_paths(interpreter, script):
    """Where an install or an extension change would show: the interpreter, the script,
    the entries of sys.path (not [0], the script's own or the notebook dir) and the user's
    site-packages even before it exists, and Jupyter's config and labextension
    directories."""
    import site

    paths = [interpreter] + ([script] if script else [])
    paths += [p for p in sys.path[1:] if os.path.isabs(p)]
    if site.ENABLE_USER_SITE:
        paths.append(site.getusersitepackages())
    try:
        from jupyter_core import paths as jupyter

        for directory in jupyter.jupyter_config_path():
            paths += [directory, os.path.join(directory, "jupyter_server_config.d")]
        paths += jupyter.jupyter_path("labextensions")
    except Exception:  # without jupyter_core, sys.path is what there is
        pass
    return sorted(set(paths))


def snapshot(paths):
    """Each path's identity and mtime, and those of a directory's entries (at most
    MAX_ENTRIES in all): an install, an upgrade or an edited config file changes it."""
    marks = []
    for path in paths:
        marks.append((path, mark(path)))
        with contextlib.suppress(OSError), os.scandir(path) as entries:
            for entry in entries:
                if len(marks) >= MAX_ENTRIES:
                    return marks
                marks.append((entry.path, mark(entry.path)))
    return marks


def mark(path):
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def watch(paths):
    """A non-blocking inotify descriptor on the directories of `paths` (a missing one's
    parent) that this user can read, or None without inotify."""
    fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        return None
    for directory in sorted({p if os.path.isdir(p) else os.path.dirname(p) for p in paths}):
        _libc.inotify_add_watch(fd, os.fsencode(directory), IN_CHANGES)
    return fd


def die_with_supervisor(supervisor):
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor:
        os._exit(1)


def set_name(name):
    """The name ps, top and pkill show (the command line stays the warm parent's)."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def wait_until_orphaned(intermediate, supervisor):
    """Block until the intermediate has exited and this process belongs to the supervisor:
    a parent-death signal set earlier would fire when the intermediate exits."""
    try:
        pidfd = os.pidfd_open(intermediate)
    except (AttributeError, OSError):  # gone already, or no pidfd in this Python or kernel
        pidfd = None
    if pidfd is not None:
        if os.getppid() == intermediate:  # else the pid is gone already, maybe reused
            select.select([pidfd], [], [])  # readable once it has exited (and re-parented us)
        os.close(pidfd)
    while os.getppid() == intermediate:  # without a pidfd: it exits right after the fork
        time.sleep(0.001)
    die_with_supervisor(supervisor)


def become_server(sock, report, request, output, listen):
    """In the intermediate: apply the launch, fork the server, write its pid to `report`,
    exit. Returns only in the server, which is told (request["listen_env"]) which of its
    descriptors are the listening sockets to serve, `listen`."""
    try:
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
        intermediate = os.getpid()  # the server's getppid() may already be the supervisor
        pid = os.fork()
    except OSError as exc:
        os.write(
            report, json.dumps({"error": f"{exc.filename or 'fork'}: {exc.strerror}"}).encode()
        )
        os._exit(1)
    if pid:
        os.write(report, json.dumps({"pid": pid}).encode())
        os._exit(0)
    os.close(report)
    sock.close()
    os.setsid()  # its own session, as a cold start's start_new_session gives it
    wait_until_orphaned(intermediate, request["supervisor"])
    sys.argv = list(request["argv"])
    if listen:
        os.environ[request["listen_env"]] = ",".join(map(str, listen))
    set_name(request["module"] or os.path.basename(sys.argv[0]))
    return request


def serve(sock, paths, marks, changes):
    """Fork one server per request while `paths` still look as `marks` says; returns (in
    the server only) the request to run. Once events on `changes` (an inotify descriptor,
    or None) settle and the paths no longer look so, exit with EXIT_STALE: the supervisor
    makes a new warm parent before the next start needs one."""
    watched = [sock] if changes is None else [sock, changes]
    settle_at = None  # when the events seen last are STALE_DEBOUNCE_S old
    while True:
        timeout = None if settle_at is None else max(settle_at - time.monotonic(), 0)
        readable, _, _ = select.select(watched, [], [], timeout)
        if changes in readable:
            drain(changes)
            settle_at = time.monotonic() + STALE_DEBOUNCE_S
        elif settle_at is not None and sock not in readable:
            settle_at = None
            if snapshot(paths) != marks:
                os._exit(EXIT_STALE)
        if sock not in readable:
            continue
        message, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
        if not message:
            os._exit(0)  # the supervisor closed its end
        request = json.loads(message)
        if not fds:  # {"check": true}: end now if stale (the supervisor makes a new one)
            if snapshot(paths) != marks:
                os._exit(EXIT_STALE)
            send(sock, fresh=True)
            continue
        output, listen = fds[0], fds[1:]
        if snapshot(paths) != marks:
            close_all(fds)
            send(sock, stale=True)
            continue
        report, report_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(report)
            if changes is not None:
                os.close(changes)
            return become_server(sock, report_w, request, output, listen)
        close_all(fds)  # the listening sockets too: this process never serves them
        os.close(report_w)
        # Once the intermediate is reaped, the server it reported is the supervisor's child.
        os.waitpid(pid, 0)
        reply = os.read(report, MAX_MESSAGE)
        os.close(report)
        sock.send(reply or json.dumps({"error": "the fork's intermediate died"}).encode())


def close_all(fds):
    for fd in fds:
        os.close(fd)


def drain(fd):
    """Read (and drop) the events waiting on a non-blocking descriptor."""
    with contextlib.suppress(OSError):  # BlockingIOError: none left
        while os.read(fd, 1 << 16):
            pass


def run(request):
    """Run the server; exit as Python would, less the interpreter's teardown.

    Freeing every object the warm parent imported takes ~0.2 s of CPU and dirties its
    shared pages, and nobody needs it from a forked child: what an exit does that others
    can see — other threads joined, atexit handlers, output flushed — still happens.
    """
    import atexit
    import runpy

    try:
        if request["module"]:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(request["argv"][0], run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exit_status(exc.code)
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def exit_status(code):
    """What the interpreter makes of sys.exit(code)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def main(spec):
    sock = socket.socket(fileno=spec["socket"])
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.argv = [spec["argv0"]]
    sys.path[0] = spec["path0"]  # where running the script itself would look first
    die_with_supervisor(spec["supervisor"])
    if sys.version_info < (3, 9):  # noqa: UP036 - not jlservice's Python; socket.recv_fds
        send(sock, error=f"{spec['interpreter']} is Python {sys.version.split()[0]}, below 3.9")
        os._exit(1)
    set_name("jlservice-warm")
    # Before the imports: a change while they run must count as a change.
    paths = watched_paths(spec["interpreter"], spec["script"])
    marks, changes = snapshot(paths), watch(paths)
    try:
        for module in spec["preload"]:
            importlib.import_module(module)
    except BaseException:  # any failure here means: start cold
        send(sock, error=traceback.format_exc(limit=1).strip().splitlines()[-1])
        os._exit(1)
    if threading.active_count() != 1:
        send(sock, error=f"importing {', '.join(spec['preload'])} started threads; cannot fork")
        os._exit(1)
    send(sock, pid=os.getpid())
    run(serve(sock, paths, marks, changes))


if __name__ == "__main__":  # as `python -c`; never on import
    main(json.loads(sys.argv[1]))
