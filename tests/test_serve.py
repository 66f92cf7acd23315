"""daphne as the site starts it (chatsite/serve.py): without Twisted's TLS and autobahn's WAMP client, which
load cryptography's Rust bindings, unless an `ssl:` endpoint is asked for."""

from __future__ import annotations

import datetime
import json
import ssl
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.live import ROOT, free_port, server_env

RUST_BINDINGS = "cryptography/hazmat/bindings/_rust"


def mapped(pid: int, part: str) -> bool:
    """Whether the process `pid` has a file whose path holds `part` mapped: a loaded extension module."""
    with open(f"/proc/{pid}/maps") as maps:
        return any(part in line for line in maps)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("lean", ["1", "0"])
def test_daphne_serves_the_site_without_cryptography_unless_switched_off(live_server_factory, lean):

    live = live_server_factory(CHAT_LEAN_DAPHNE=lean)
    with urllib.request.urlopen(f"{live.url}/accounts/login/", timeout=10) as response:
        assert response.status == 200
    assert live.proc is not None
    # As `daphne` itself would: the bindings loaded by Twisted's TLS at the reactor's import.
    assert mapped(live.proc.pid, RUST_BINDINGS) is (lean == "0")


# After the lean import: what was left out, then the names of both still there when asked.
IMPORT_SCRIPT = """
import json, sys
from chatsite import serve
serve.import_daphne(sys.argv[1:])
out = {"loaded": sorted(m for m in ("OpenSSL", "twisted.internet.ssl", "autobahn.wamp.auth",
                                    "cryptography.hazmat.bindings._rust") if m in sys.modules)}
from twisted.internet import reactor
out["reactor"] = type(reactor).__name__
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.twisted import ApplicationSession  # the deferred `__init__` runs here
import OpenSSL.SSL  # hidden only while daphne was imported
out["after"] = [ApplicationSession.__module__, OpenSSL.SSL.__name__, "autobahn.wamp.auth" in sys.modules]
print(json.dumps(out))
"""


@pytest.mark.parametrize(
    ("args", "loaded"),
    [
        ([], []),
        (
            ["-e", "ssl:8443:privateKey=key.pem"],
            ["OpenSSL", "cryptography.hazmat.bindings._rust", "twisted.internet.ssl"],
        ),
    ],
    ids=["plain", "ssl-endpoint"],
)
def test_what_the_import_leaves_out_and_every_name_still_there(args, loaded):
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_SCRIPT, *args], cwd=ROOT, env=server_env(), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["loaded"] == loaded
    assert out["reactor"] == "AsyncioSelectorReactor"
    assert out["after"] == ["autobahn.twisted.wamp", "OpenSSL.SSL", True]


def self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.mark.django_db(transaction=True)
def test_an_ssl_endpoint_still_serves_tls(tmp_path):
    key, cert = self_signed(tmp_path)
    port = free_port()
    log = open(tmp_path / "daphne.log", "wb")  # noqa: SIM115
    endpoint = f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatsite.serve", "-e", endpoint, "chatsite.asgi:application"],
        cwd=ROOT, env=server_env(), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "daphne.log").read_text()
            try:
                with urllib.request.urlopen(
                    f"https://127.0.0.1:{port}/healthz", timeout=2, context=context
                ) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "daphne.log").read_text()
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
