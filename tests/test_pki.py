"""Tests of testbed.security.pki on real files, checked by `cryptography`, Python's ssl and Mosquitto."""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import os
import queue
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testbed.core.errors import PKIError
from testbed.core.ports import free_port
from testbed.core.waiting import wait_until
from testbed.pytest_plugin import require
from testbed.security import pki as pki_module
from testbed.security.pki import PKI, CertPaths

SERVERS = {"broker-dc": ["dc.example.net", "10.0.0.5"], "broker-field": []}
CLIENTS = ["meter-1", "dms"]


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    authority = PKI(tmp_path / "pki")
    authority.init(SERVERS, CLIENTS)
    return authority


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _crl(authority: PKI) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(authority.crl.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*.*")}


def _installed(binary: str) -> str:
    found = shutil.which(binary)
    require(found is not None, f"{binary} is not installed (Debian package mosquitto / mosquitto-clients)")
    return str(found)


def test_exports_are_complete() -> None:
    defined_here = {
        name
        for name, obj in vars(pki_module).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == pki_module.__name__
    }
    assert set(pki_module.__all__) == defined_here


def test_init_creates_everything_with_private_keys_0600(tmp_path: Path) -> None:
    authority = PKI(tmp_path / "pki")
    assert not authority.exists()
    created = authority.init(SERVERS, CLIENTS)
    assert created == ["ca", "broker-dc", "broker-field", "meter-1", "dms"]
    assert authority.exists()
    keys = [authority.directory / "ca" / "ca.key"]
    keys += [authority.server(name).key for name in SERVERS]
    keys += [authority.client(name).key for name in CLIENTS]
    assert all(_mode(key) == 0o600 for key in keys)
    certs = [authority.ca_cert, authority.crl, authority.directory / "index.json"]
    certs += [authority.server(name).cert for name in SERVERS]
    certs += [authority.client(name).cert for name in CLIENTS]
    assert all(_mode(cert) == 0o644 for cert in certs)
    assert _mode(authority.directory / "ca") == 0o700
    assert not list(authority.directory.rglob("*.tmp"))


def test_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        authority = PKI(tmp_path / "pki")
        authority.init({"broker": []}, ["meter-1"])
    finally:
        os.umask(previous)
    assert _mode(authority.directory / "ca" / "ca.key") == 0o600
    assert _mode(authority.client("meter-1").key) == 0o600
    assert _mode(authority.client("meter-1").cert) == 0o644


def test_init_again_keeps_every_file_byte_identical(pki: PKI) -> None:
    before = _snapshot(pki.directory)
    assert pki.init(SERVERS, CLIENTS) == []
    assert _snapshot(pki.directory) == before


def test_init_adds_only_what_is_missing(pki: PKI) -> None:
    before = _snapshot(pki.directory)
    assert pki.init(SERVERS, [*CLIENTS, "capbank-7"]) == ["capbank-7"]
    after = _snapshot(pki.directory)
    assert {name: after[name] for name in before if name != "index.json"} == {
        name: data for name, data in before.items() if name != "index.json"
    }
    assert pki.client("capbank-7").cert.exists()


def test_ca_is_a_distinct_constrained_authority(pki: PKI, tmp_path: Path) -> None:
    ca = _cert(pki.ca_cert)
    common_name = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert str(common_name).startswith("fmb-testbed CA ")
    other = PKI(tmp_path / "other")
    other.init({}, [])
    assert _cert(other.ca_cert).subject != ca.subject
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ca.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > dt.timedelta(days=3650)


def test_server_certificate_names_and_usage(pki: PKI) -> None:
    cert = _cert(pki.server("broker-dc").cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns_names = set(sans.get_values_for_type(x509.DNSName))
    assert dns_names == {"localhost", "broker-dc", "dc.example.net"}
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.0.0.5"}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca_ski = _cert(pki.ca_cert).extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.value.digest
    assert cert.not_valid_after_utc - cert.not_valid_before_utc < dt.timedelta(days=740)


def test_client_certificate_carries_the_mqtt_identity(pki: PKI) -> None:
    cert = _cert(pki.client("meter-1").cert)
    assert cert.subject.rfc4514_string() == "CN=meter-1"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_init_refuses_a_kept_server_certificate_missing_a_new_hostname(pki: PKI) -> None:
    with pytest.raises(PKIError, match="does not cover new.example.net"):
        pki.init({"broker-field": ["new.example.net"]}, [])


def test_missing_certificate_says_to_run_init(pki: PKI) -> None:
    with pytest.raises(PKIError, match="fmb certs init"):
        pki.client("nobody")
    with pytest.raises(PKIError, match="fmb certs init"):
        pki.server("meter-1")


def test_bad_names_are_refused(tmp_path: Path) -> None:
    for name in ["../escape", "", "ca", "has space"]:
        with pytest.raises(PKIError, match="not usable"):
            PKI(tmp_path / "pki").init({}, [name])
    with pytest.raises(PKIError, match="both a server and a client"):
        PKI(tmp_path / "pki").init({"x": []}, ["x"])


def test_crl_is_signed_and_current_from_the_start(pki: PKI) -> None:
    crl = _crl(pki)
    ca = _cert(pki.ca_cert)
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert crl.issuer == ca.subject
    assert len(crl) == 0
    assert crl.next_update_utc is not None
    ahead = crl.next_update_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=360) < ahead < dt.timedelta(days=366)
    assert crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)


def test_revoke_puts_the_serial_in_the_crl(pki: PKI) -> None:
    number = _crl(pki).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    serial = pki.revoke("meter-1")
    assert serial == _cert(pki.client("meter-1").cert).serial_number
    crl = _crl(pki)
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number + 1
    assert crl.is_signature_valid(_cert(pki.ca_cert).public_key())  # type: ignore[arg-type]
    assert pki.is_revoked("meter-1") and not pki.is_revoked("dms")

    before = pki.crl.read_bytes()
    assert pki.revoke("meter-1") == serial
    assert pki.crl.read_bytes() == before


def test_revoke_unknown_name_lists_the_known_ones(pki: PKI) -> None:
    with pytest.raises(PKIError, match="known: broker-dc, broker-field, dms, meter-1"):
        pki.revoke("meter-9")


def test_issue_client_refuses_a_valid_one_and_replaces_a_revoked_one(pki: PKI) -> None:
    with pytest.raises(PKIError, match="revoke it first"):
        pki.issue_client("meter-1")
    old_key = pki.client("meter-1").key.read_bytes()
    old_serial = pki.revoke("meter-1")
    paths = pki.issue_client("meter-1")
    assert paths == CertPaths(cert=pki.client("meter-1").cert, key=pki.client("meter-1").key)
    assert _cert(paths.cert).serial_number != old_serial
    assert paths.key.read_bytes() != old_key and _mode(paths.key) == 0o600
    assert not pki.is_revoked("meter-1")
    assert _crl(pki).get_revoked_certificate_by_serial_number(old_serial) is not None

    new = pki.issue_client("rtu-3")
    assert _cert(new.cert).subject.rfc4514_string() == "CN=rtu-3"
    with pytest.raises(PKIError, match="already a server"):
        pki.issue_client("broker-dc")


def test_init_does_not_bring_back_a_revoked_client(pki: PKI) -> None:
    pki.revoke("dms")
    paths = pki.client("dms")
    paths.cert.unlink()
    paths.key.unlink()
    assert pki.init(SERVERS, CLIENTS) == []
    assert pki.is_revoked("dms")


def test_a_lost_key_says_how_to_reissue(pki: PKI) -> None:
    pki.client("meter-1").key.unlink()
    with pytest.raises(PKIError, match="delete .*meter-1.pem too"):
        pki.client("meter-1")


def test_a_bad_name_creates_nothing(tmp_path: Path) -> None:
    authority = PKI(tmp_path / "pki")
    with pytest.raises(PKIError, match="not usable"):
        authority.init({"broker": []}, ["meter-1", "bad/name"])
    assert not authority.ca_cert.exists()


def test_index_is_rebuilt_from_the_files_and_the_crl(pki: PKI) -> None:
    serial = pki.revoke("dms")
    (pki.directory / "index.json").unlink()
    assert pki.is_revoked("dms") and not pki.is_revoked("meter-1")
    assert pki.revoke("dms") == serial


def test_inventory(pki: PKI) -> None:
    pki.revoke("dms")
    rows = {row["name"]: row for row in pki.certificates()}
    assert set(rows) == {"ca", *SERVERS, *CLIENTS}
    assert rows["ca"]["kind"] == "ca" and rows["broker-dc"]["kind"] == "server"
    assert rows["dms"]["revoked"] and not rows["meter-1"]["revoked"]
    assert rows["meter-1"]["subject"] == "CN=meter-1"
    assert rows["meter-1"]["serial"] == _cert(pki.client("meter-1").cert).serial_number
    assert dt.datetime.fromisoformat(rows["ca"]["not_after"]).year >= dt.date.today().year + 9


@contextlib.contextmanager
def _crl_checking_server(authority: PKI) -> Iterator[tuple[int, queue.Queue[str]]]:
    """A TLS server on 127.0.0.1 that requires a client certificate and checks the CRL."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server = authority.server("broker-field")
    context.load_cert_chain(server.cert, server.key)
    context.load_verify_locations(cafile=authority.ca_cert)
    context.load_verify_locations(cafile=authority.crl)
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    outcomes: queue.Queue[str] = queue.Queue()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # closing a socket does not wake a thread blocked in accept()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                try:
                    with context.wrap_socket(connection, server_side=True) as tls:
                        tls.sendall(b"ok")
                    outcomes.put("ok")
                except (ssl.SSLError, OSError) as exc:
                    outcomes.put(str(exc))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], outcomes
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def _handshake(port: int, authority: PKI, client: CertPaths) -> bytes:
    context = ssl.create_default_context(cafile=authority.ca_cert)
    context.load_cert_chain(client.cert, client.key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        # TLS 1.3: the server judges the client certificate after the client's handshake ends.
        return tls.recv(2)


def test_python_ssl_refuses_a_revoked_client(pki: PKI) -> None:
    pki.revoke("dms")
    with _crl_checking_server(pki) as (port, outcomes):
        assert _handshake(port, pki, pki.client("meter-1")) == b"ok"
        assert outcomes.get(timeout=5) == "ok"
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _handshake(port, pki, pki.client("dms"))
        assert "certificate revoked" in outcomes.get(timeout=5)


def test_mosquitto_accepts_its_clients_only(pki: PKI, tmp_path: Path) -> None:
    mosquitto = _installed("mosquitto")
    mosquitto_pub = _installed("mosquitto_pub")
    stranger = PKI(tmp_path / "stranger")
    stranger.init({}, ["meter-1"])
    pki.revoke("dms")
    port = free_port()
    server = pki.server("broker-field")
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        f"cafile {pki.ca_cert}\ncertfile {server.cert}\nkeyfile {server.key}\n"
        f"crlfile {pki.crl}\n"
        "require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
        f"user {getpass.getuser()}\nlog_dest stdout\n"
    )
    log = tmp_path / "mosquitto.log"
    with open(log, "wb") as out:
        broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=out, stderr=out)
    try:
        def listening() -> bool:
            assert broker.poll() is None, f"mosquitto exited: {log.read_text()}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return True
            return False

        wait_until(listening, 10, error=AssertionError, what=lambda: f"mosquitto did not listen: {log.read_text()}")

        def publish(client: CertPaths) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [mosquitto_pub, "--cafile", str(pki.ca_cert), "--cert", str(client.cert),
                 "--key", str(client.key), "-h", "localhost", "-p", str(port),
                 "-V", "5", "-t", "t", "-m", "x"],
                capture_output=True, text=True, timeout=20,
            )  # fmt: skip

        valid = publish(pki.client("meter-1"))
        assert valid.returncode == 0, valid.stderr + log.read_text()
        assert publish(stranger.client("meter-1")).returncode != 0
        assert publish(pki.client("dms")).returncode != 0, "mosquitto ignored the CRL"
    finally:
        broker.terminate()
        try:
            broker.wait(timeout=5)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()
