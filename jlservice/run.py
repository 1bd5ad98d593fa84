"""`jlservice run`: set up logging and run the supervisor loop until it stops."""

from __future__ import annotations

import asyncio

from jlservice import EX_CONFIG, log
from jlservice.config import Config
from jlservice.supervisor import Supervisor


def run(config: Config) -> int:
    log.configure(config.log.level, config.log.format)
    logger = log.get("jlservice")
    for name in ("state_dir", "runtime_dir"):
        path = getattr(config.service, name)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            logger.error(
                "config_invalid",
                problem=f"[service] {name}: cannot create {path}: "
                f"{exc.strerror}; create it or choose another directory",
            )
            return EX_CONFIG
    return asyncio.run(Supervisor(config).run())
