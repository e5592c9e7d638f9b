"""Run a Node or Network under gunicorn (threads); ``num_replicas`` worker processes share
the database and blob store and keep no state that another replica needs."""

from __future__ import annotations

import errno
import os
import shutil
import socket
from collections.abc import Callable
from typing import Any

from pygrid.config import ServerSettings


class PortInUse(RuntimeError):
    """The port is taken; the message names the process holding it when it can be found."""

    def __init__(self, port: int, holder: str | None, reason: str = "is in use") -> None:
        self.port = port
        self.holder = holder
        self.reason = reason
        super().__init__(f"{self.what}; choose another with --port")

    @property
    def what(self) -> str:
        """'port 5000 is in use by pid 12 (python3)': the problem without a hint how to fix it."""
        where = f" by {self.holder}" if self.holder else ""
        return f"port {self.port} {self.reason}{where}"


def port_holder(port: int) -> str | None:
    """'pid 123 (python3)' for the process listening on ``port``, or None if unknown."""
    import psutil

    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in connections:
        if (
            conn.laddr
            and conn.laddr.port == port
            and conn.status == psutil.CONN_LISTEN
            and conn.pid
        ):
            try:
                name = psutil.Process(conn.pid).name()
            except psutil.Error:
                name = "?"
            return f"pid {conn.pid} ({name})"
    return None


def check_port_free(host: str, port: int) -> None:
    """Raise PortInUse naming the holder if ``host:port`` cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(port, port_holder(port)) from None
            raise PortInUse(port, None, f"cannot be used on {host}: {exc.strerror}") from None


def prepare_metrics_dir(settings: ServerSettings) -> None:
    """Point prometheus_client's multiprocess mode at a fresh folder so replicas' counts add up."""
    path = settings.data_dir / "prometheus"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def serve(settings: ServerSettings, app_factory: Callable[[ServerSettings], Any]) -> None:
    """Serve ``app_factory(settings)`` with gunicorn until SIGTERM/SIGINT; blocks."""
    from gunicorn.app.base import BaseApplication

    options = {
        "bind": f"[{settings.host}]:{settings.port}"
        if ":" in settings.host
        else f"{settings.host}:{settings.port}",
        "workers": settings.num_replicas,
        "worker_class": "gthread",
        "threads": settings.threads,
        "timeout": 120,
        "graceful_timeout": 10,
        # gunicorn's default of 2 s races clients that reuse a connection after ~2 s idle (a
        # reset POST, seen in the FL benchmarks); idle connections cost no thread with gthread.
        "keepalive": 30,
        "proc_name": f"pygrid-{settings.app}-{settings.id}",
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": "info",
        "control_socket_disable": True,
        "worker_tmp_dir": str(settings.data_dir),
    }

    class Application(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app_factory(settings)

    Application().run()
