"""New login secrets while the supervisor runs: made, saved at once, said in the log."""

from __future__ import annotations

from pathlib import Path

from jlservice import log, login, users
from jlservice.login import Secrets

logger = log.get("jlservice.supervisor")


def renew(state_dir: Path) -> Secrets:
    """A new token and cookie secret, saved at once: a replaced token must never come back
    (if they cannot be saved, the old ones' files are removed where they can be)."""
    secrets = Secrets(login.new_token(), login.new_cookie_secret())
    log.add_secret(secrets.token)
    try:
        login.save_secrets(state_dir, *secrets)
    except OSError as exc:
        logger.error(
            "secrets_not_saved",
            problem=f"cannot save the new token in {state_dir}: {exc.strerror}; it is in "
            "use, and the old one's files are removed where they can be, so that it does "
            "not come back if jlservice restarts",
        )
    return secrets


def log_user_changed(old: str, new: users.Account) -> None:
    logger.warning(
        "lab_user_changed",
        old=old,
        new=f"{new.name} (uid {new.uid})",
        effect="token and cookie secret rotated; the old user's runtime files removed",
    )
