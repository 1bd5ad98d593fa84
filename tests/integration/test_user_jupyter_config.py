"""The lab user's own Jupyter config stays theirs: jlservice adds its server extensions and
its labextension beside those the user's config names, never in their place (on JupyterLab's
command line, a `jpserver_extensions` or `extra_labextensions_path` would replace the
user's)."""

from __future__ import annotations

import html
import json
import os
import re
import secrets
from pathlib import Path

from jupyter_server.auth import passwd

from jlservice import users
from jlservice.kernels.labnotice import OOM_KILLED, VERSION


def _readable(path: Path) -> Path:
    path.mkdir(parents=True)
    path.chmod(0o755)
    return path


def _user_config(
    tmp_path: Path, owner: users.Account | None, extension: str, labextension: str, more: str = ""
) -> dict[str, str]:
    """A Jupyter config dir (the lab user's: Jupyter writes in it), a Python path and a
    labextension dir, as a user has them; the environment that points JupyterLab at them."""
    python = _readable(tmp_path / "user" / "python")
    (python / f"{extension}.py").write_text(
        "from jupyter_server.base.handlers import JupyterHandler\n"
        "class Loaded(JupyterHandler):\n"
        "    def get(self):\n"
        "        self.finish('loaded')\n"
        "def _jupyter_server_extension_points():\n"
        f"    return [{{'module': {extension!r}}}]\n"
        "def _load_jupyter_server_extension(app):\n"
        "    base = app.web_app.settings['base_url']\n"
        f"    app.web_app.add_handlers('.*$', [(base + {extension!r}, Loaded)])\n"
    )
    labextensions = _readable(tmp_path / "user" / "labextensions")
    package = {
        "name": labextension,
        "version": "0.1.0",
        "jupyterlab": {"_build": {"load": "static/remoteEntry.js", "extension": "./extension"}},
    }
    (_readable(labextensions / labextension) / "package.json").write_text(json.dumps(package))
    config = _readable(tmp_path / "user" / "jupyter")
    (config / "jupyter_server_config.py").write_text(
        f"c.ServerApp.jpserver_extensions = {{{extension!r}: True}}\n"
        f"c.LabApp.extra_labextensions_path = [{str(labextensions)!r}]\n{more}"
    )
    for path in (*python.iterdir(), *config.iterdir(), *labextensions.rglob("*.json")):
        path.chmod(0o644)
    if owner is not None:
        os.chown(config, owner.uid, owner.gid)
    return {"JUPYTER_CONFIG_DIR": str(config), "PYTHONPATH": str(python)}


def test_the_users_own_extensions_load_beside_jlservices(service_factory, lab_user, tmp_path):
    extension = "jlstest_user_ext_" + secrets.token_hex(3)
    labextension = "jlstest-user-labext"
    env = _user_config(tmp_path, lab_user, extension, labextension)
    svc = service_factory(lab={"env": env})
    svc.start()  # jlservice's listening extension serves the socket it holds: started is loaded
    token = svc.cli("token").stdout.strip()

    answer = svc.api("GET", extension, token)
    assert (answer.status_code, answer.text) == (200, "loaded")  # the user's server extension
    data = {"kernel_id": "k", "notebook": "", "memory_bytes": 1, "limit_bytes": None}
    event = {"schema_id": OOM_KILLED, "version": VERSION, "data": {**data, "message": "m"}}
    taken = svc.api("POST", "api/events", token, json=event)  # jlservice_notices' schema
    assert taken.status_code == 204, taken.text
    page = svc.api("GET", "lab", token)
    found = re.search(r'id="jupyter-config-data"[^>]*>(.*?)</script>', page.text, re.S)
    assert found, page.text[:500]
    names = {e["name"] for e in json.loads(html.unescape(found[1]))["federated_extensions"]}
    assert {"jlservice", labextension} <= names


def test_with_a_password_the_users_config_is_read_and_cannot_replace_it(
    service_factory, lab_user, tmp_path
):
    """jlservice's password comes first: the lab user's own config is read as well (its
    server extension loads), but its own hashed_password does not replace jlservice's."""
    extension = "jlstest_user_ext_" + secrets.token_hex(3)
    theirs = f"c.PasswordIdentityProvider.hashed_password = {passwd('theirs')!r}\n"
    env = _user_config(tmp_path, lab_user, extension, "jlstest-user-labext", theirs)
    svc = service_factory(lab={"env": env})
    assert svc.cli("password", "--stdin", input="jlservices\n").returncode == 0
    svc.start()
    token = svc.cli("token").stdout.strip()
    answer = svc.api("GET", extension, token)
    assert (answer.status_code, answer.text) == (200, "loaded")
    assert svc.api("GET", "api/contents", session=svc.login("jlservices")).status_code == 200
    assert svc.api("GET", "api/contents", session=svc.login("theirs")).status_code == 403
