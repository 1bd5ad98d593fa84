"""`jlservice status [--json]`: the supervisor and JupyterLab state, exit 3 when not running."""

from __future__ import annotations

import argparse
import json
import time

from jlservice import config, notebooks_file, procfs, state
from jlservice.cli._client import EX_NOT_RUNNING, config_path, published
from jlservice.cli.common import mask
from jlservice.text import escape_controls


def register(sub, common: argparse.ArgumentParser) -> None:
    status = sub.add_parser(
        "status",
        parents=[common],
        help="show whether it runs, and how",
        description="Show the supervisor and JupyterLab state. Exit status "
        "0 when running, 3 when not.",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    service = config.load_service(config_path(args))
    current = published(service)
    running = state.supervisor_alive(current)
    masked = current.evolve(token=mask(current.token))
    if args.json:
        report = json.loads(masked.to_json())
        report["running"] = running
        if running and current.warm_parent:
            report["warm_parent"]["rss_bytes"] = procfs.rss_bytes(current.warm_parent.pid)
        report["login_url"] = state.login_url(masked)
        report["notebooks"] = notebooks_file.read(service.runtime_dir) if running else None
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(_describe(masked, running))
    return 0 if running else EX_NOT_RUNNING


def _describe(s: state.State, running: bool) -> str:
    now = time.time()
    lines = []
    if running:
        up = _duration(now - s.supervisor_started_at) if s.supervisor_started_at else "?"
        lines.append(f"jlservice:   running (pid {s.supervisor_pid}, up {up})")
    else:
        lines.append("jlservice:   not running")
    lab = s.status if running else "stopped"
    if running and s.lab_pid:
        lab += f" (pid {s.lab_pid}"
        since = s.ready_at if s.status == state.READY else s.started_at
        lab += f", for {_duration(now - since)})" if since else ")"
    lines += [
        f"JupyterLab:  {lab}",
        f"URL:         {state.login_url(s)}",
        f"user:        {s.user}",
        f"notebooks:   {s.notebook_dir}",
        f"config:      {s.config_path or 'built-in defaults'}",
        f"restarts:    {s.restarts}",
    ]
    if running and s.warm_parent:
        lines.append(f"warm parent: {_warm_parent(s.warm_parent)}")
    if s.kernels and (s.kernels.kept or s.last_exit):
        lines.append(f"kernels:     {_kernels(s.kernels)}")
    if running and s.limits:
        lines.append(f"kernel limits: {s.limits}")
    if s.last_oom_kill:
        lines.append(f"OOM kills:   {s.oom_kills}; last: {_oom_kill(s.last_oom_kill)}")
    if s.last_exit:
        e = s.last_exit
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at))
        lines.append(f"last exit:   {e.describe()} at {when} ({e.reason})")
    if s.last_error:
        lines.append(f"last error:  {s.last_error}")
    if running and s.config_error:
        lines.append(f"config error: {s.config_error} (still serving with the previous one)")
    if running and s.reload_pending:
        lines.append(f"reload:      pending, {s.reload_pending}")
    if running and s.stuck_pids:
        pids = ", ".join(map(str, s.stuck_pids))
        lines.append(f"stuck:       pid {pids}: SIGKILL did not end them (frozen, or in D state)")
    if running and s.state_error:
        lines.append(f"state file:  {s.state_error}")
    # The last error can quote a process name or JupyterLab's last words: the lab user's.
    return "\n".join(escape_controls(line) for line in lines)


def _oom_kill(k: state.OomKill) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(k.at))
    whose = (
        f"notebook {k.notebook or '(none)'} (kernel {k.kernel_id})"
        if k.kernel_id
        else ("a process of JupyterLab's that is no kernel's")
    )
    limit = f"limit {_size(k.limit_bytes)}" if k.limit_bytes else "no limit but the machine's"
    what = f"{k.process} (pid {k.pid}) had" if k.pid is not None else "its cgroup peaked at"
    return f"{whose} at {when}: {what} {_size(k.memory_bytes)}, {limit}"


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _kernels(k: state.KeptKernels) -> str:
    line = f"{k.kept} kept across the last restart, {k.adopted} adopted"
    return line + (f", {k.waiting} waiting to be adopted" if k.waiting else "")


def _warm_parent(warm: state.WarmParent) -> str:
    rss = procfs.rss_bytes(warm.pid)
    memory = f", {rss / 2**20:.0f} MiB resident" if rss is not None else ""
    what = "ready" if warm.ready else "importing JupyterLab"
    return f"{what} (pid {warm.pid}{memory})"


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n] or ["0s"]
    return " ".join(shown[:2])
