"""What jlservice tells the people in JupyterLab: that the OOM killer ended a process of a
notebook's kernel, with the notebook, the memory it had and the limit.

Runs inside JupyterLab as the server extension `jlservice_notices` (always loaded), from
the directory jlservice puts first on JupyterLab's PYTHONPATH. Once loaded, it takes that
directory, and the one first on JUPYTER_CONFIG_PATH that enabled jlservice's server
extensions, out of os.environ again (jupyter_server has read its config by then), as
jlservice_kernels does for each kernel's environment: kernels and terminals never see them,
and a `jupyter lab` run in a terminal does not look for jlservice's modules. It registers
the event's schema on jupyter_server's event bus: jlservice (root) then posts the event to
JupyterLab's `POST api/events` (token-authenticated, as the sampler asks api/kernels),
jupyter_server emits it to every open tab's api/events/subscribe, and jlservice's
labextension (inlab/labextension/) shows it as a notification, as text. Whoever holds the
token (the lab user) may post it too: it is the lab user's own JupyterLab that shows it.
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG_DIR = os.path.join(os.path.dirname(HERE), "config")  # start/launcher's CONFIG_DIR
OOM_KILLED = "https://jlservice.invalid/events/oom-killed/v1"  # kernels/labnotice.py posts it
OOM_KILLED_SCHEMA = {
    "$id": OOM_KILLED,
    "version": "1",
    "title": "jlservice: the OOM killer ended a process of a notebook's kernel",
    "description": "The front end shows `message` in a notification.",
    "type": "object",
    "properties": {
        "kernel_id": {"type": "string", "title": "the kernel's id"},
        "notebook": {"type": "string", "title": "the notebook's path (empty: no session's)"},
        "memory_bytes": {"type": "integer", "title": "what the killed process had"},
        "limit_bytes": {"type": ["integer", "null"], "title": "the limit (null: the machine's)"},
        "message": {"type": "string", "maxLength": 1024, "title": "what to show, as text"},
    },
    "required": ["kernel_id", "notebook", "memory_bytes", "limit_bytes", "message"],
}


def _without(directory, value):
    """A search path `value` without `directory` (None when nothing else is left)."""
    parts = [p for p in value.split(os.pathsep) if p and os.path.abspath(p) != directory]
    return os.pathsep.join(parts) or None


def scrub(env):
    """jlservice's directories out of `env`: kernels and terminals never see them."""
    for name, directory in (("PYTHONPATH", HERE), ("JUPYTER_CONFIG_PATH", CONFIG_DIR)):
        left = _without(directory, env.get(name, ""))
        if left is None:
            env.pop(name, None)
        else:
            env[name] = left


def _jupyter_server_extension_points():
    return [{"module": __name__}]


def _load_jupyter_server_extension(serverapp):
    """The schema registered (jupyter_server's api/events refuses an event without one), and
    jlservice's directories out of os.environ: not sooner, as ServerApp.kernel_manager_class
    imports jlservice_kernels, and with it this module, before the config is looked for."""
    serverapp.event_logger.register_event_schema(OOM_KILLED_SCHEMA)
    scrub(os.environ)
