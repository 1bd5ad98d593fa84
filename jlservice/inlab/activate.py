"""Start a kernel of a conda environment or venv as if the environment were activated.

The first word of the argv jlservice's kernelspec manager gives such a kernel: JupyterLab's
own interpreter runs this file (`python -I -S jlservice_activate.py KIND PREFIX NAME --
ARGV…`), as the lab user, in the kernel's launch. It sets what `conda activate` (or a
venv's `activate`) sets, sources the environment's `etc/conda/activate.d/*.sh` in a
plain non-login shell, bounded by TIMEOUT, and then becomes the kernel (exec): same pid,
same session, its argv naming its connection file.

An activation script that hangs, exits the shell or fails is named in one line on stderr
(jlservice's log) and the kernel starts all the same, with the environment's interpreter,
PATH and CONDA_PREFIX: the kernel is usable, and what the script should have set is what
is missing, rather than the whole environment refusing to start over one script.

Standard library only, and only what the kernel's start needs: it runs on every start.
"""

import os
import select
import stat  # os imported it already
import sys

TIMEOUT = 5.0  # seconds for all of an environment's activation scripts together
MAX_OUTPUT = 4 << 20
MAX_STATE = 1 << 20
SIGKILL = 9  # the signal module imports enum: every kernel start would pay for it
SHELL_OWN = ("_", "SHLVL", "PWD", "OLDPWD")  # what the shell itself changes
ACTIVATED = (
    "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV",
    "CONDA_SHLVL",
    "CONDA_PROMPT_MODIFIER",
    "VIRTUAL_ENV",
    "VIRTUAL_ENV_PROMPT",
    "PYTHONHOME",
)
# Sources each script in order, then prints the environment on fd 3 (the pipe); the
# scripts' own output goes to stderr. \1 marks a script started, \3 one that failed, \2
# the end (what follows is `env -0`).
SOURCE = (
    "exec 3>&1 1>&2\n"
    'for __jlservice_script do printf "\\001%s\\0" "$__jlservice_script" >&3\n'
    '  . "$__jlservice_script" || printf "\\003%s:%s\\0" "$?" "$__jlservice_script" >&3\n'
    "done\n"
    'printf "\\002\\0" >&3; exec env -0 >&3\n'
)


def say(line):
    sys.stderr.write(f"jlservice: {line}\n")
    sys.stderr.flush()


def activated(environ, kind, prefix, name):
    """`environ` as the environment's activation makes it, before its scripts."""
    env = dict(environ)
    bindir = os.path.join(prefix, "bin")
    previous = {os.path.join(env[k], "bin") for k in ("CONDA_PREFIX", "VIRTUAL_ENV") if env.get(k)}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p not in previous]
    env["PATH"] = os.pathsep.join([bindir, *(p for p in path if p != bindir)])
    for key in ACTIVATED:
        env.pop(key, None)
    if kind == "venv":
        env["VIRTUAL_ENV"] = prefix
        return env
    named = name == "base" or os.path.basename(os.path.dirname(prefix)) == "envs"
    env.update(
        CONDA_PREFIX=prefix,
        CONDA_DEFAULT_ENV=name if named else prefix,
        CONDA_SHLVL="1",
        CONDA_PROMPT_MODIFIER=f"({name if named else prefix}) ",
    )
    env.update(_state_vars(prefix))
    return env


def _state_vars(prefix):
    """`conda env config vars set` keeps them in conda-meta/state."""
    try:  # non-blocking: a FIFO there must not hang the kernel's start
        fd = os.open(os.path.join(prefix, "conda-meta", "state"), os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        raw = os.read(fd, MAX_STATE)
    except OSError:
        return {}
    finally:
        os.close(fd)
    import json  # only when there is a state: every kernel start pays the imports

    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    found = data.get("env_vars") if isinstance(data, dict) else None
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items() if isinstance(v, str) and k.isidentifier()}


def scripts_of(prefix):
    directory = os.path.join(prefix, "etc", "conda", "activate.d")
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".sh"))
    except OSError:
        return []
    return [os.path.join(directory, n) for n in names]


def source(env, scripts, where, timeout=TIMEOUT):
    """`env` after sourcing `scripts`; `env` itself, with one line said, when they fail."""
    output, finished, status = _collect(*_spawn(env, scripts), timeout)
    started, failed, result = _parse(output)
    if len(output) > MAX_OUTPUT or status != 0:  # what it printed is not all of `env -0`
        result = None
    for status, script in failed:
        say(f"{where}: {_short(script)} failed (status {status}); its settings may be partial")
    if result is not None:
        for key in SHELL_OWN:
            result.pop(key, None)
            if key in env:
                result[key] = env[key]
        return result
    culprit = _short(started[-1] if started else scripts[0])
    if len(output) > MAX_OUTPUT:
        why = f"printed more than {MAX_OUTPUT >> 20} MiB of environment"
    elif not finished:
        why = f"did not finish within {timeout:g} s"
    else:
        why = f"ended the shell (status {status})"
    say(f"{where}: {culprit} {why}; the kernel starts without the activation scripts' settings")
    return env


def _spawn(env, scripts):
    """The shell sourcing `scripts`, in a session of its own (a hung script and whatever
    it started are ended together), its stdout a pipe: (its pid, the pipe's read end).
    posix_spawn, not subprocess, whose imports would cost every kernel start ~8 ms."""
    shell = "/bin/bash" if os.access("/bin/bash", os.X_OK) else "/bin/sh"
    plain = ["--noprofile", "--norc"] if shell == "/bin/bash" else []
    argv = [shell, *plain, "-c", SOURCE, "sh", *scripts]
    read, write = os.pipe()  # both close-on-exec; the shell gets its copy on fd 1
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    actions = [(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, write, 1)]
    try:
        pid = os.posix_spawn(shell, argv, env, file_actions=actions, setsid=True)
    except OSError:
        os.close(read)
        raise
    finally:
        os.close(write)
        os.close(devnull)
    return pid, read


def _collect(pid, fd, timeout):
    """What the shell wrote on the pipe, whether it exited by itself in time (if not, it
    and what it started are killed), and its exit status."""
    import time

    os.set_blocking(fd, False)
    pidfd = os.pidfd_open(pid)
    chunks, size, eof, exited = [], 0, False, False
    deadline = time.monotonic() + timeout
    try:
        while not exited and size <= MAX_OUTPUT:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready = select.select([pidfd] if eof else [fd, pidfd], [], [], left)[0]
            exited = pidfd in ready
            while not eof and size <= MAX_OUTPUT:  # all there is now
                chunk = _read(fd)
                if not chunk:
                    eof = chunk == b""
                    break
                chunks.append(chunk)
                size += len(chunk)
    finally:
        os.close(pidfd)
        if not exited:  # before the pipe closes: nothing it started meets EPIPE and says so
            _kill_group(pid)  # on stderr, in the middle of our line
        os.close(fd)
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return b"".join(chunks), exited, status


def _kill_group(pid):
    try:  # noqa: SIM105 - contextlib's imports would cost every kernel start
        os.killpg(pid, SIGKILL)
    except OSError:
        pass


def _read(fd):
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return None


def _parse(output):
    """(scripts started, (status, script) of those that failed, the environment at the
    end or None when the shell did not get there)."""
    started, failed = [], []
    parts = output.split(b"\0")
    for i, part in enumerate(parts):
        if part.startswith(b"\1"):
            started.append(os.fsdecode(part[1:]))
        elif part.startswith(b"\3"):
            status, _, script = os.fsdecode(part[1:]).partition(":")
            failed.append((status, script))
        elif part == b"\2":
            env = {}
            for pair in parts[i + 1 :]:
                key, sep, value = os.fsdecode(pair).partition("=")
                if sep and key.isidentifier():
                    env[key] = value
            return started, failed, env
    return started, failed, None


def _short(script):
    parts = script.split(os.sep)
    return os.sep.join(parts[-4:]) if len(parts) > 4 else script


def main(argv):
    kind, prefix, name, dashes, *command = argv
    if dashes != "--" or not command or kind not in ("conda", "venv"):
        say("usage: jlservice_activate.py conda|venv PREFIX NAME -- ARGV…")
        return 2
    env = activated(os.environ, kind, prefix, name)
    scripts = scripts_of(prefix)
    if scripts:
        env = source(env, scripts, f"environment {name} ({prefix})")
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        say(f"environment {name} ({prefix}): cannot start {command[0]}: {exc.strerror}")
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
