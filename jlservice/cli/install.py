"""`jlservice install` and `jlservice uninstall`: the systemd units, for root or for one user."""

from __future__ import annotations

import argparse
import os

from jlservice.errors import CommandError


def register(sub, common: argparse.ArgumentParser) -> None:
    install = sub.add_parser(
        "install",
        help="install the systemd unit (and a configuration file if there is none)",
        description="Write /etc/jlservice/jlservice.toml if it does not exist (an existing "
        "file is never overwritten), write the systemd unit with ExecStart pointing at this "
        "jlservice, and run `systemctl daemon-reload`. Safe to run again.",
    )
    install.add_argument(
        "--user",
        metavar="NAME",
        help="the account JupyterLab runs as (default: $SUDO_USER, or the instance name)",
    )
    install.add_argument("--notebook-dir", metavar="DIR", help="default: the user's home")
    install.add_argument("--port", type=int, metavar="N", help="default: 8888")
    install.add_argument("--ip", metavar="ADDR", help="default: 127.0.0.1")
    _where(install)
    install.set_defaults(func=cmd_install)

    uninstall = sub.add_parser(
        "uninstall",
        help="stop the service and remove its unit (config and state stay unless --purge)",
        description="Stop and disable the service, remove its unit and run `systemctl "
        "daemon-reload`. The configuration and the state (token) stay unless --purge. "
        "Safe to run again.",
    )
    uninstall.add_argument(
        "--purge", action="store_true", help="also remove the configuration file and the state"
    )
    _where(uninstall)
    uninstall.set_defaults(func=cmd_uninstall)


def _where(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--instance",
        metavar="NAME",
        help="the template instance jlservice@NAME with /etc/jlservice/NAME.toml, "
        "for one more JupyterLab on its own port",
    )
    which.add_argument(
        "--user-unit",
        action="store_true",
        help="install for your own account's systemd (systemctl --user), without root",
    )


def _target(args: argparse.Namespace):
    from jlservice.admin import install

    if args.config:
        raise CommandError(
            "--config does not apply: install and uninstall use /etc/jlservice/jlservice.toml, "
            "/etc/jlservice/NAME.toml (--instance) or ~/.config/jlservice (--user-unit)"
        )
    if args.user_unit:
        if os.geteuid() == 0:
            raise CommandError(
                "--user-unit installs for your own account, not root's: run it as that user "
                "(root uses the system unit: drop --user-unit)"
            )
        return install.user_target(os.environ)
    if os.geteuid() != 0:
        raise CommandError(
            "the system unit goes into /etc/systemd/system: run this as root (sudo), "
            "or add --user-unit to install for your own account"
        )
    return install.system_target(args.instance)


def cmd_install(args: argparse.Namespace) -> int:
    from jlservice.admin import install

    target = _target(args)
    if args.user_unit and args.user:
        raise CommandError("--user-unit runs JupyterLab as you: drop --user")
    asked = {"user": args.user, "notebook_dir": args.notebook_dir, "ip": args.ip}
    given: dict[str, str | int] = {k: v for k, v in asked.items() if v is not None}
    if args.port is not None:
        given["port"] = args.port
    default_user = None if args.user_unit else (args.instance or _sudo_user())
    _report(lambda: install.install(target, given, default_user))
    ctl = " ".join(target.systemctl)
    path = target.config_path
    config = "" if path.name == "jlservice.toml" else f" --config {path}"
    print("next:")
    print(f"  {ctl} enable --now {target.service}")
    if args.user_unit:
        print("  loginctl enable-linger   # keep it running when you log out, start it at boot")
    print(f"  jlservice token --url{config}")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    from jlservice.admin import install

    target = _target(args)
    _report(lambda: install.uninstall(target, purge=args.purge))
    return 0


def _report(action) -> None:
    from jlservice.admin import install

    try:
        done = action()
    except install.InstallError as exc:
        for line in exc.done:
            print(line)
        raise CommandError(str(exc)) from None
    for line in done:
        print(line)


def _sudo_user() -> str | None:
    name = os.environ.get("SUDO_USER")
    return name if name and name != "root" else None
