"""Azurite (Microsoft's Azure Storage emulator, from npm) in a separate process on 127.0.0.1.

scripts/setup.sh installs it into .tools/azurite; it needs ``node`` on PATH. `azurite_blob`
serves the blob API over https (a self-signed certificate for 127.0.0.1) with Azurite's basic
OAuth on, so the real azure-storage-blob client reaches it as it reaches Azure from a VM: a
bearer token from a managed identity (`managed_identity_token` makes one Azurite accepts; an
`ImdsStub` hands it out). Azurite's well-known development account key works too.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.cloud_stubs import self_signed
from tests.support.moto import HOST, free_port

REPO = Path(__file__).resolve().parents[2]
AZURITE_BLOB = REPO / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
#: Azurite's development account: published in Azurite's documentation, valid nowhere else.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
TENANT = "00000000-0000-4000-8000-000000000000"


@dataclasses.dataclass(frozen=True)
class Azurite:
    """A running Azurite blob service."""

    #: The account's blob endpoint: ``https://127.0.0.1:PORT/devstoreaccount1``.
    url: str
    #: The certificate clients must trust (``REQUESTS_CA_BUNDLE``, ``connection_verify``).
    ca_file: str

    @property
    def connection_string(self) -> str:
        """The development account's connection string (shared key)."""
        return (
            f"DefaultEndpointsProtocol=https;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.url};"
        )


def missing() -> str | None:
    """Why Azurite cannot run here (a reason to skip), or None if it can."""
    if shutil.which("node") is None:
        return "node is not installed (apt-get install nodejs npm; scripts/setup.sh)"
    if not AZURITE_BLOB.exists():
        return f"Azurite is not installed in {AZURITE_BLOB.parents[2]} (run scripts/setup.sh)"
    return None


def managed_identity_token(lifetime: int = 3 * 3600) -> str:
    """A JWT shaped like Entra ID's for Azure Storage: Azurite's basic OAuth checks the audience,
    issuer and times, not the signature."""

    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {
        "aud": "https://storage.azure.com",
        "iss": f"https://sts.windows.net/{TENANT}/",
        "tid": TENANT,
        "oid": "11111111-1111-4111-8111-111111111111",
        "nbf": now - 60,
        "iat": now - 60,
        "exp": now + lifetime,
    }
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


@contextmanager
def azurite_blob(startup_timeout: float = 60.0) -> Iterator[Azurite]:
    """Run Azurite's blob service (https, OAuth, in memory) on a free port; stop it by PID."""
    reason = missing()
    if reason is not None:
        raise RuntimeError(reason)
    with (
        tempfile.TemporaryDirectory(prefix="pygrid-azurite-") as folder,
        tempfile.TemporaryFile() as log,
    ):
        cert, key = self_signed(Path(folder))
        port = free_port()
        command = [
            str(AZURITE_BLOB),
            *("--blobHost", HOST, "--blobPort", str(port)),
            *("--cert", str(cert), "--key", str(key), "--oauth", "basic"),
            "--inMemoryPersistence",
            # The SDK may speak a newer API version than this Azurite knows.
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ]
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=folder
        )
        try:
            deadline = time.monotonic() + startup_timeout
            while not (_listening(port) and process.poll() is None):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    output = log.read().decode(errors="replace")
                    raise RuntimeError(
                        f"Azurite on {HOST}:{port} did not start "
                        f"(exit code {process.poll()}):\n{output}"
                    )
                time.sleep(0.1)
            yield Azurite(f"https://{HOST}:{port}/{ACCOUNT}", str(cert))
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
