"""What the log says at start-up, and what is allowed but risky (again after each reload)."""

from __future__ import annotations

import os

from jlservice import disk, log
from jlservice.config import Config
from jlservice.config.access import open_to_local_users, risks
from jlservice.start import launcher

logger = log.get("jlservice.supervisor")


def started(config: Config, launch: launcher.Launch) -> None:
    logger.info(
        "supervisor_started",
        pid=os.getpid(),
        config=str(config.path or "built-in defaults"),
        user=config.lab.user,
        port=config.lab.port,
    )
    warn_about_launch(launch)
    warn_about_config(config)


def warn_about_config(config: Config) -> None:
    """No login for the other people with accounts here, a wildcard allow_origin…"""
    lab = config.lab
    if problem := open_to_local_users(lab, config.auth, config.account.uid):
        logger.warning("open_to_local_users", problem=problem)
    for problem in risks(lab.options, lab.user):
        logger.warning("config_risky", problem=problem)


def warn_about_launch(launch: launcher.Launch) -> None:
    """A notebook dir where notebooks cannot be saved."""
    if why := read_only_notebooks(launch):
        logger.warning("notebook_dir_read_only", problem=why)


def certificate_expiry(config: Config) -> float | None:
    """When the certificate expires (for the metrics); from 30 days before, a warning."""
    if not config.tls.enabled:
        return None
    from jlservice.admin import tls

    if problem := tls.expiry_warning(config.tls.cert_pem):
        logger.warning("tls_certificate_expiring", problem=problem)
    return tls.expiry(config.tls.cert_pem)


def read_only_notebooks(launch: launcher.Launch) -> str | None:
    """Why notebooks cannot be saved when the notebook dir sits on a read-only mount (as
    everything outside ReadWritePaths= does under ProtectSystem=strict), or None."""
    try:
        if not disk.statvfs(launch.cwd, disk.ANSWER_WITHIN_S).f_flag & os.ST_RDONLY:
            return None
    except OSError:
        return None  # missing or not answering: the start itself says so
    return (
        f"notebook_dir {launch.cwd} is on a read-only mount here, so notebooks cannot be saved; "
        f"under systemd, allow it with `systemctl edit <unit>` and ReadWritePaths=-{launch.cwd} "
        "(`jlservice install` does this for the directory it is given)"
    )
