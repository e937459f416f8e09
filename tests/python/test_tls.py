"""amqps through pika: a Warren started with only its TLS listener (``--plain-listener false``),
peer verification and ``fail_if_no_peer_cert``. The certificates (a CA, a server certificate for
127.0.0.1 and localhost, a client certificate with CN=guest) are made here with the
``cryptography`` package; pika connects with an ``ssl.SSLContext`` through ``pika.SSLOptions``,
logging in with PLAIN and with EXTERNAL (the user named by the certificate's CN)."""

import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pika
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import REPO, _free_port, _log_tail, _stop

STARTUP_DEADLINE_S = 20.0


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(subject, key, issuer, issuer_key, *, ca=False, sans=(), usage=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject))
               .issuer_name(_name(issuer))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path, cert=None, key=None):
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(path)


@pytest.fixture
def pki(tmp_path):
    """CA, server and client (CN=guest) certificates and keys, as PEM files in tmp_path."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Warren pika test CA", ca_key, "Warren pika test CA", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate("localhost", server_key, "Warren pika test CA", ca_key,
                          sans=[x509.DNSName("localhost"),
                                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                          usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate("guest", client_key, "Warren pika test CA", ca_key,
                          usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return {
        "ca": _write(tmp_path / "ca.pem", cert=ca),
        "server_cert": _write(tmp_path / "server.pem", cert=server),
        "server_key": _write(tmp_path / "server-key.pem", key=server_key),
        "client_cert": _write(tmp_path / "client.pem", cert=client),
        "client_key": _write(tmp_path / "client-key.pem", key=client_key),
    }


@pytest.fixture
def tls_warren(tmp_path, pki):
    """A Warren serving amqps only, and its management API over HTTPS; yields (plain port,
    TLS port, HTTPS port)."""
    if os.environ.get("AMQP_URL"):
        pytest.skip("needs a Warren started with TLS flags")
    binary = Path(os.environ.get("WARREN_BIN") or REPO / "target" / "debug" / "warren")
    port = _free_port()
    tls_port = _free_port()
    while tls_port == port:
        tls_port = _free_port()
    https_port = _free_port()
    while https_port in (port, tls_port):
        https_port = _free_port()
    metrics_port = _free_port()
    while metrics_port in (port, tls_port, https_port):
        metrics_port = _free_port()
    log_path = tmp_path / "warren-tls.log"
    cmd = [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--mgmt-port", "0", "--prometheus-port", "0",
           "--plain-listener", "false",
           "--tls-port", str(tls_port), "--tls-cert", pki["server_cert"],
           "--tls-key", pki["server_key"], "--tls-ca", pki["ca"],
           "--tls-verify-peer", "true", "--tls-fail-if-no-peer-cert", "true",
           "--mgmt-tls-port", str(https_port), "--prometheus-tls-port", str(metrics_port),
           "--data-dir", str(tmp_path / "data")]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        waiting = [tls_port, https_port, metrics_port]
        while waiting:
            assert proc.poll() is None, _log_tail(log_path)
            try:
                with socket.create_connection(("127.0.0.1", waiting[0]), timeout=0.5):
                    waiting.pop(0)
                    continue
            except OSError:
                pass
            assert time.monotonic() < deadline, "Warren did not start:\n" + _log_tail(log_path)
            try:  # the poll interval, ending early if the broker exits
                proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
        yield port, tls_port, https_port, metrics_port
    finally:
        _stop(proc)


def _context(pki, client_certificate=True):
    context = ssl.create_default_context(cafile=pki["ca"])
    if client_certificate:
        context.load_cert_chain(pki["client_cert"], pki["client_key"])
    return context


def _parameters(tls_port, context, credentials):
    return pika.ConnectionParameters(
        host="127.0.0.1", port=tls_port, credentials=credentials,
        ssl_options=pika.SSLOptions(context, server_hostname="localhost"),
        connection_attempts=1, socket_timeout=10, blocked_connection_timeout=10)


@pytest.mark.parametrize("credentials", [pika.PlainCredentials("guest", "guest"),
                                         pika.credentials.ExternalCredentials()],
                         ids=["PLAIN", "EXTERNAL"])
def test_pika_over_tls_with_a_client_certificate(tls_warren, pki, credentials):
    _, tls_port, _, _ = tls_warren
    conn = pika.BlockingConnection(_parameters(tls_port, _context(pki), credentials))
    try:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        body = os.urandom(300_000)  # several TLS records
        ch.basic_publish("", queue, body)
        method, _, got = ch.basic_get(queue, auto_ack=True)
        assert method is not None and got == body
    finally:
        conn.close()


def test_a_client_without_a_certificate_is_refused(tls_warren, pki):
    _, tls_port, _, _ = tls_warren
    params = _parameters(tls_port, _context(pki, client_certificate=False),
                         pika.PlainCredentials("guest", "guest"))
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params)


def test_the_plain_listener_is_off(tls_warren):
    port, _, _, _ = tls_warren
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_the_management_api_is_served_over_https_with_the_amqps_certificate(tls_warren, pki):
    """HTTPS needs no client certificate (basic auth), even with peer verification on amqps."""
    import base64
    import json
    import urllib.error
    import urllib.request
    _, _, https_port, _ = tls_warren
    token = base64.b64encode(b"guest:guest").decode()
    request = urllib.request.Request(f"https://localhost:{https_port}/api/whoami",
                                     headers={"Authorization": f"Basic {token}"})
    context = _context(pki, client_certificate=False)
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        assert response.status == 200
        assert json.load(response)["name"] == "guest"
    # The certificate is checked by the client: one from another CA is not trusted.
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(request, context=ssl.create_default_context(), timeout=10)
    # Plain HTTP on the HTTPS port gets no HTTP answer (a TLS alert, or nothing).
    import http.client
    plain = urllib.request.Request(f"http://127.0.0.1:{https_port}/api/whoami",
                                   headers={"Authorization": f"Basic {token}"})
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, OSError)):
        urllib.request.urlopen(plain, timeout=10)


def test_prometheus_metrics_are_served_over_https_with_the_amqps_certificate(tls_warren, pki):
    """RabbitMQ's `prometheus.ssl.port`: the same endpoints as on the plain port, no auth."""
    import urllib.error
    import urllib.request
    _, _, _, metrics_port = tls_warren
    url = f"https://localhost:{metrics_port}/metrics"
    context = _context(pki, client_certificate=False)
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    assert "rabbitmq_identity_info" in text and "rabbitmq_connections " in text
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=10)


def test_certificate_expiration_health_check_reads_the_certificate(tls_warren, pki):
    """The test certificate is valid for 30 days: fine within a week, expiring within a
    month (503 naming the TLS listeners, as RabbitMQ's check)."""
    import base64
    import json
    import urllib.error
    import urllib.request
    _, tls_port, https_port, _ = tls_warren
    token = base64.b64encode(b"guest:guest").decode()
    context = _context(pki, client_certificate=False)

    def check(within, unit):
        request = urllib.request.Request(
            f"https://localhost:{https_port}/api/health/checks/certificate-expiration/{within}/{unit}",
            headers={"Authorization": f"Basic {token}"})
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    assert check(1, "weeks") == (200, {"status": "ok"})
    status, body = check(1, "months")
    assert status == 503, body
    assert body["status"] == "failed" and body["reason"] == "Certificates expiring"
    assert {"protocol": "amqp/ssl", "port": tls_port} in [
        {"protocol": e["protocol"], "port": e["port"]} for e in body["expired"]], body
    assert check(1, "fortnights")[0] == 400
