"""Per-substation intermediate CAs and bulk issuance (issue 12), on real files, checked by
`cryptography`, Python's ssl and a real Mosquitto running the project's own broker configuration."""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import ssl
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from brokers.mosquitto import BrokerFiles, mosquitto_binary, render_broker
from testbed.core.errors import PKIError
from testbed.core.topics import topic
from testbed.core.topology import Topology, load_topology
from testbed.core.waiting import wait_until
from testbed.security import mint
from testbed.security import pki as pki_module
from testbed.security.mint import Issuer, leaf_serial
from testbed.security.pki import PKI, CertPaths
from testbed.security.provision import ensure_pki, issuers_for
from testbed.transport.mqtt import Endpoint, TLSIdentity, connect

SUB = "field-ca"  # the intermediate of Appendix A's field site, in these tests
UNDER_SUB = ["meter-1", "capbank-1"]  # siblings under it; everything else under the root


def _certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _crls(authority: PKI) -> list[x509.CertificateRevocationList]:
    marker = b"-----BEGIN X509 CRL-----"
    return [x509.load_pem_x509_crl(marker + part) for part in authority.crl.read_bytes().split(marker)[1:]]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Topology:
    return load_topology().with_free_ports()


@pytest.fixture
def pki(tmp_path: Path, topology: Topology) -> PKI:
    authority = PKI(tmp_path / "certs")
    servers = {b.name: [b.host] for b in topology.brokers}
    authority.init(servers, topology.client_identities(), {name: SUB for name in UNDER_SUB})
    return authority


def test_exports_are_complete() -> None:
    defined_here = {name for name, obj in vars(mint).items()
                    if not name.startswith("_") and getattr(obj, "__module__", None) == mint.__name__}
    assert set(mint.__all__) == defined_here


def test_intermediate_is_a_ca_under_the_root_with_its_key_0600(pki: PKI) -> None:
    paths = pki.intermediate(SUB)
    assert _mode(paths.key) == 0o600 and _mode(paths.key.parent) == 0o700
    [cert] = _certs(paths.cert)
    root = _certs(pki.ca_cert)[0]
    assert cert.issuer == root.subject
    cert.verify_directly_issued_by(root)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
    assert pki.issuer_of("meter-1") == SUB and pki.issuer_of("supply-1") == "ca"


def test_a_client_file_holds_leaf_then_intermediate(pki: PKI) -> None:
    intermediate = _certs(pki.intermediate(SUB).cert)[0]
    for name in UNDER_SUB:
        leaf, chain = _certs(pki.client(name).cert)
        assert _cn(leaf) == name and chain == intermediate
        leaf.verify_directly_issued_by(intermediate)
        assert _mode(pki.client(name).key) == 0o600
    [root_leaf] = _certs(pki.client("supply-1").cert)  # under the root: the leaf alone
    root_leaf.verify_directly_issued_by(_certs(pki.ca_cert)[0])


def test_crl_file_holds_the_root_crl_then_each_intermediates(pki: PKI) -> None:
    pki.init({}, ["meter-2"], {"meter-2": "sub-002-ca"})
    blocks = pki.crl.read_text().count("-----BEGIN X509 CRL-----")
    assert blocks == 3
    crls = _crls(pki)
    issuers = [_certs(pki.ca_cert)[0], _certs(pki.intermediate(SUB).cert)[0],
               _certs(pki.intermediate("sub-002-ca").cert)[0]]
    for crl, issuer in zip(crls, issuers, strict=True):
        assert crl.issuer == issuer.subject
        assert crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]


def test_revoke_goes_on_the_issuers_crl_with_a_derived_serial(pki: PKI) -> None:
    serial = pki.revoke("meter-1")
    intermediate = _certs(pki.intermediate(SUB).cert)[0]
    assert serial == leaf_serial(intermediate, "meter-1", 0)
    crls = {crl.issuer: crl for crl in _crls(pki)}
    assert crls[intermediate.subject].get_revoked_certificate_by_serial_number(serial) is not None
    assert crls[_certs(pki.ca_cert)[0].subject].get_revoked_certificate_by_serial_number(serial) is None
    # A reissue is the next generation, by the same intermediate, and is not revoked.
    fresh = _certs(pki.issue_client("meter-1").cert)[0]
    assert fresh.serial_number == leaf_serial(intermediate, "meter-1", 1) != serial
    assert not pki.is_revoked("meter-1") and pki.issuer_of("meter-1") == SUB
    # A rotation keeps the issuer too, and revokes the old one on the intermediate's CRL.
    old, new = pki.rotate("meter-1", revoke_old=True)
    assert (old, new) == (fresh.serial_number, leaf_serial(intermediate, "meter-1", 2))
    leaf, chain = _certs(pki.client("meter-1").cert)
    assert leaf.serial_number == new and chain == intermediate
    crls = {crl.issuer: crl for crl in _crls(pki)}
    assert crls[intermediate.subject].get_revoked_certificate_by_serial_number(old) is not None


def test_index_rebuilt_from_files_keeps_issuers_and_revocations(pki: PKI) -> None:
    serial = pki.revoke("capbank-1")
    (pki.directory / "index.json").unlink()
    assert pki.issuer_of("capbank-1") == SUB and pki.is_revoked("capbank-1")
    assert pki.issuer_of("supply-1") == "ca" and not pki.is_revoked("meter-1")
    assert pki.revoke("capbank-1") == serial
    assert pki.issue_client("capbank-1")  # generation recovered from the serial: 1 now
    assert _certs(pki.client("capbank-1").cert)[0].serial_number == leaf_serial(
        _certs(pki.intermediate(SUB).cert)[0], "capbank-1", 1)


def test_bad_input_is_one_line(pki: PKI, tmp_path: Path) -> None:
    cases: list[tuple[dict[str, str], list[str], str]] = [
        ({"meter-1": "bad/ca"}, ["meter-1"], "not usable"),
        ({"meter-1": "ca"}, ["meter-1"], "not usable"),
        ({"nobody": SUB}, ["meter-1"], "not among the clients"),
        ({"meter-1": "supply-1"}, ["meter-1", "supply-1"], "name of a broker or device"),
        ({"meter-1": "sub-009-ca"}, ["meter-1"], "was issued by 'field-ca', not 'sub-009-ca'"),
        ({"new-1": "field-delivery"}, ["new-1"], "already a server"),
    ]
    for issuers, clients, message in cases:
        with pytest.raises(PKIError, match=message) as caught:
            pki.init({}, clients, issuers)
        assert "\n" not in str(caught.value)
    with pytest.raises(PKIError, match="no intermediate CA named 'sub-404-ca'.*known: field-ca"):
        pki.intermediate("sub-404-ca")
    with pytest.raises(PKIError, match="intermediate CA: Mosquitto checks only a leaf's CRL"):
        pki.revoke(SUB)
    with pytest.raises(PKIError, match="no certificate named 'meter-404'"):
        pki.revoke("meter-404")


def test_a_lost_intermediate_is_not_silently_rekeyed(pki: PKI, tmp_path: Path) -> None:
    cert = pki.intermediate(SUB).cert
    kept = cert.read_bytes()
    cert.unlink()
    with pytest.raises(PKIError, match="is missing; restore it and its key from a backup"):
        pki.init({}, ["meter-1"], {"meter-1": SUB})
    cert.write_bytes(kept)
    assert pki.init({}, ["meter-1"], {"meter-1": SUB}) == []


def test_an_old_root_without_room_for_intermediates_says_so(tmp_path: Path) -> None:
    authority = PKI(tmp_path / "old")
    authority.init({}, ["meter-1"])
    # Re-make the root as before intermediates existed (path length 0), with the same key.
    root = Issuer.load(authority.ca_cert, authority.directory / "ca" / "ca.key", intermediate=False)
    constraints = x509.BasicConstraints(ca=True, path_length=0)
    old = mint.sign(root.cert.subject, root.key.public_key(), root.cert.subject, root.key,
                    root.cert.not_valid_after_utc - mint.now(),
                    [constraints, mint.key_usage(key_cert_sign=True, crl_sign=True)])
    authority.ca_cert.write_bytes(old.public_bytes(pki_module.serialization.Encoding.PEM))
    with pytest.raises(PKIError, match="allows no intermediate CAs"):
        authority.init({}, ["meter-2"], {"meter-2": "sub-001-ca"})


def test_minted_locally_from_the_intermediate_alone(pki: PKI, tmp_path: Path) -> None:
    """A substation mints its devices where they run; the central CRL still revokes them."""
    paths = pki.intermediate(SUB)
    site = tmp_path / "substation"
    issuer = Issuer.load(paths.cert, paths.key)
    minted = issuer.mint(["meter-7", "meter-8"], site)
    assert set(minted) == {"meter-7", "meter-8"}
    assert issuer.mint(["meter-7", "meter-8"], site) == {}  # kept as they are
    leaf, chain = _certs(site / "meter-7.pem")
    assert _cn(leaf) == "meter-7" and chain == issuer.cert and _mode(site / "meter-7.key") == 0o600
    assert leaf.serial_number == minted["meter-7"] == leaf_serial(issuer.cert, "meter-7", 0)
    with pytest.raises(PKIError, match="not usable"):
        issuer.mint(["../escape"], site)
    with pytest.raises(PKIError, match="is not the key of"):
        Issuer.load(paths.cert, pki.client("meter-1").key)
    with pytest.raises(PKIError, match="not a CA certificate"):
        Issuer.load(pki.client("supply-1").cert, pki.client("supply-1").key)


def test_bulk_init_signs_with_each_ca_loaded_once_and_syncs_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """500 clients under five substations: one load of each CA and a handful of fsyncs, not one
    per file (the 10,000-certificate figures are in the branch's report, not a test)."""
    clients = [f"sub-{i % 5:03d}-m{i:04d}" for i in range(500)]
    issuers = {name: name[:7] + "-ca" for name in clients}
    loads: list[Path] = []
    fsyncs: list[int] = []
    real_load, real_fsync = Issuer.load.__func__, os.fsync  # type: ignore[attr-defined]
    def load(cls: type[Issuer], cert: Path, key: Path, intermediate: bool = True) -> Issuer:
        loads.append(cert)
        return real_load(cls, cert, key, intermediate)  # type: ignore[no-any-return]

    monkeypatch.setattr(Issuer, "load", classmethod(load))
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))
    authority = PKI(tmp_path / "bulk")
    created = authority.init({"broker": []}, clients, issuers)
    assert len(created) == 1 + 5 + 1 + 500
    assert sorted(p.name for p in loads) == ["ca.pem", *(f"sub-{i:03d}-ca.pem" for i in range(5))]
    assert len(fsyncs) < 40, f"{len(fsyncs)} fsyncs for 500 certificates"
    index_writes = len(fsyncs)
    assert authority.init({"broker": []}, clients, issuers) == []
    assert len(fsyncs) == index_writes  # nothing missing: nothing written
    for name in (clients[0], clients[-1]):
        leaf, chain = _certs(authority.client(name).cert)
        leaf.verify_directly_issued_by(chain)
        assert _mode(authority.client(name).key) == 0o600
    assert not list(authority.directory.rglob("*.tmp"))


def test_ensure_pki_takes_the_mapping(tmp_path: Path, topology: Topology) -> None:
    assert issuers_for(topology) == {}  # Appendix A: no fleets, everything under the root
    authority = ensure_pki(topology, tmp_path / "certs", {"meter-1": "field-ca"})
    assert authority.issuer_of("meter-1") == "field-ca" and authority.issuer_of("dms-1") == "ca"


def test_a_generated_substations_devices_share_its_intermediate(tmp_path: Path) -> None:
    utility = load_topology(Path(__file__).resolve().parent.parent / "brokers/topologies/utility-small.toml")
    issuers = issuers_for(utility)
    for device in utility.devices:
        generated = device.site in {s for t in utility.templates for s in t.site_names()}
        assert issuers.get(device.id) == (f"{device.site}-ca" if generated else None), device
    assert {d.role for d in utility.devices if d.id in issuers} >= {"meter", "tablet", "supply", "capbank"}
    authority = ensure_pki(utility, tmp_path / "certs")
    some_meter = next(d for d in utility.devices if d.fleet)
    leaf, chain = _certs(authority.client(some_meter.id).cert)
    assert _cn(chain) == f"fmb-testbed {some_meter.site}-ca " + _cn(_certs(authority.ca_cert)[0]).split()[-1]
    leaf.verify_directly_issued_by(chain)
    assert all(authority.issuer_of(b.name) == "ca" for b in utility.bridges)
    assert authority.init({b.name: [b.host] for b in utility.brokers} | utility.web_servers(),
                          utility.client_identities(), issuers) == []


# -- a real Mosquitto with the project's broker configuration -----------------------------------


@contextlib.contextmanager
def _broker(topology: Topology, authority: PKI, directory: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    broker = topology.broker("field-delivery")
    files = BrokerFiles(certs=authority.directory, directory=directory, log=directory / "mosquitto.log",
                        user=getpass.getuser())
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in render_broker(topology, broker, files).items():
        (directory / name).write_text(text)
    process = subprocess.Popen([mosquitto_binary(), "-c", str(directory / "mosquitto.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = directory / "mosquitto.log"

    def listening() -> bool:
        assert process.poll() is None, f"mosquitto exited: {log.read_text() if log.exists() else ''}"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", broker.port), 1):
            return True
        return False

    try:
        wait_until(listening, 10, error=AssertionError, what="mosquitto did not listen")
        yield broker.port, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _handshake(port: int, authority: PKI, client: CertPaths) -> str:
    """"ok" when Mosquitto answers an MQTT v5 CONNECT over TLS with this client certificate with
    a successful CONNACK, else why not. TLS 1.3 ends the client's handshake before the server has
    judged its certificate, so only the broker's first answer tells."""
    context = ssl.create_default_context(cafile=authority.ca_cert)
    context.load_cert_chain(client.cert, client.key)
    client_id = b"pki-probe"
    variable = b"\x00\x04MQTT\x05\x02\x00\x3c\x00"  # MQTT 5, clean start, keepalive 60 s, no properties
    body = variable + len(client_id).to_bytes(2) + client_id
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(bytes([0x10, len(body)]) + body)
            answer = tls.recv(16)
    except (ssl.SSLError, ConnectionError) as exc:
        return str(exc)
    if len(answer) >= 4 and answer[0] == 0x20 and answer[3] == 0:
        return "ok"
    return f"no successful CONNACK: {answer.hex() or 'connection closed'}"


def test_mosquitto_checks_the_intermediates_crl_after_a_reload(
    pki: PKI, topology: Topology, tmp_path: Path
) -> None:
    with _broker(topology, pki, tmp_path / "broker") as (port, process):
        # The leaf under the intermediate speaks MQTT v5 through the project's client.
        meter = pki.client("meter-1")
        client = connect("meter-1", TLSIdentity(pki.ca_cert, meter.cert, meter.key),
                         Endpoint("127.0.0.1", port), wait_s=10)
        try:
            info = client.publish(topic(topology.root, "MeterReadingProfile", "meter-1"), b"{}", qos=1)
            info.wait_for_publish(5)
            assert info.rc == paho.MQTT_ERR_SUCCESS and info.is_published()
        finally:
            client.disconnect()
            client.loop_stop()
        assert _handshake(port, pki, meter) == "ok"

        pki.revoke("meter-1")
        assert _handshake(port, pki, meter) == "ok"  # the broker has not reloaded its CRLs yet
        process.send_signal(signal.SIGHUP)
        # Mosquitto ends the TLS session without a reason the client can read; that the refusal
        # is the revocation shows in what still connects with the same CRL file.
        wait_until(lambda: _handshake(port, pki, meter) != "ok", 10,
                   what="mosquitto still accepts meter-1 after revoke and SIGHUP")
        assert _handshake(port, pki, pki.client("capbank-1")) == "ok"  # its sibling
        assert _handshake(port, pki, pki.client("supply-1")) == "ok"  # under the root

        pki.revoke("supply-1")  # the root's CRL, the first of the same file, is read too
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: _handshake(port, pki, pki.client("supply-1")) != "ok", 10,
                   what="mosquitto still accepts supply-1 after revoke and SIGHUP")
        assert _handshake(port, pki, pki.client("capbank-1")) == "ok"
        assert process.poll() is None


def test_a_locally_minted_device_is_accepted_and_revoked_centrally(
    pki: PKI, topology: Topology, tmp_path: Path
) -> None:
    """The substation mints meter-9 itself; the central PKI knows it only by name and intermediate."""
    paths = pki.intermediate(SUB)
    site = tmp_path / "substation"
    Issuer.load(paths.cert, paths.key).mint(["meter-9"], site)
    local = CertPaths(site / "meter-9.pem", site / "meter-9.key")
    pki.init({}, ["meter-9"], {"meter-9": SUB})  # central record: same serial, own key
    with _broker(topology, pki, tmp_path / "broker") as (port, process):
        assert _handshake(port, pki, local) == "ok"
        pki.revoke("meter-9")
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: _handshake(port, pki, local) != "ok", 10,
                   what="the locally minted meter-9 still connects after the central revoke")
        assert _handshake(port, pki, pki.client("capbank-1")) == "ok"
