"""A real moto server in a separate process on 127.0.0.1, for tests of the AWS code paths."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

HOST = "127.0.0.1"
# Fake credentials for the server's environment: moto accepts any, and real ones must never leak.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    # http.client, not urllib: it never goes through an HTTP(S)_PROXY from the environment.
    connection = http.client.HTTPConnection(HOST, port, timeout=1)
    try:
        connection.request("GET", "/moto-api/")
        connection.getresponse().read()
    except OSError:
        return False
    finally:
        connection.close()
    return True


@contextmanager
def moto_server(startup_timeout: float = 30.0) -> Iterator[str]:
    """Run ``python -m moto.server`` on a free port; yield its endpoint URL; stop it by PID."""
    env = {**os.environ, **FAKE_AWS_ENV}
    env.pop("AWS_PROFILE", None)
    with tempfile.TemporaryFile() as log:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline = time.monotonic() + startup_timeout
            # Also require our process alive: another server may have taken the port meanwhile.
            while not (_answers(port) and process.poll() is None):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    output = log.read().decode(errors="replace")
                    raise RuntimeError(
                        f"moto server on {HOST}:{port} did not start "
                        f"(exit code {process.poll()}):\n{output}"
                    )
                time.sleep(0.1)
            yield f"http://{HOST}:{port}"
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
