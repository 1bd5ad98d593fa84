"""The listening socket jlservice holds across JupyterLab's restarts (jlservice/start/
listening.py), served by JupyterLab instead of binding the port ([kernels] survive_restarts).

Runs inside JupyterLab (jupyter_server 2.10 to 2.21 at least) as the server extension
`jlservice_listening`, from the directory jlservice puts first on JupyterLab's PYTHONPATH
(which jlservice_kernels takes out of the environment again).
"""

import os
import socket

LISTEN_FDS = "JLSERVICE_LISTEN_FDS"
_BINDS = ("_find_http_port", "_bind_http_server_tcp")  # jupyter_server 2.10 to 2.21 at least


def _jupyter_server_extension_points():
    return [{"module": __name__}]


def _load_jupyter_server_extension(serverapp):
    """Serve the listening sockets jlservice hands over instead of binding the port: they
    stay open across this server's restart, so a connection made meanwhile waits for the
    next server instead of being refused. Runs before the server binds (init_httpserver)."""
    listen = os.environ.pop(LISTEN_FDS, "")  # kernels and terminals never see it
    if not listen:
        return  # not started by jlservice with a socket: it binds itself
    missing = [name for name in _BINDS if not callable(getattr(type(serverapp), name, None))]
    if missing:
        serverapp.log.critical(
            "jlservice: this jupyter_server has no %s to serve jlservice's listening socket "
            "with; set [kernels] survive_restarts = false, or use jupyter_server 2.10 to 2.x",
            " or ".join(missing),
        )
        serverapp.exit(1)
    sockets = []
    for fd in map(int, listen.split(",")):
        os.set_inheritable(fd, False)  # terminals fork and exec without closing fds
        sockets.append(socket.socket(fileno=fd))
        sockets[-1].setblocking(False)

    def bind():
        serverapp.http_server.add_sockets(sockets)
        return True

    serverapp._find_http_port = lambda: None  # its test bind would find the port in use
    serverapp._bind_http_server_tcp = bind
