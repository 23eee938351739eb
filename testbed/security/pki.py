"""The testbed's public-key infrastructure: one certificate authority per directory, made with
the `cryptography` package, that issues a server certificate per broker and a client certificate
per device (the certificate's CN is the device's MQTT identity), and a certificate revocation list
that Mosquitto (`crlfile`) and Python's `ssl` both check. Keys are EC P-256 and are written 0600
from the moment they exist; every file is replaced by an atomic rename, so a reader never sees half
a certificate. `index.json` maps each name to its kind, serial and revocation state; it is a cache
of the certificate files and the CRL and is rebuilt from them when it is missing.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testbed.core.errors import PKIError

__all__ = ["PKI", "CertPaths", "spki_pin", "write_atomic"]

CA_VALIDITY = dt.timedelta(days=3652)
LEAF_VALIDITY = dt.timedelta(days=730)
CRL_VALIDITY = dt.timedelta(days=365)
# OpenSSL refuses every handshake once the CRL's next_update has passed, so init re-signs early.
CRL_RENEW_BEFORE = dt.timedelta(days=30)
# Backdate validity starts a little, so a peer whose clock lags does not see "not yet valid".
CLOCK_SKEW = dt.timedelta(minutes=5)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KINDS = {"server": "servers", "client": "clients"}
_KEY_USAGES = (  # noqa: SIM905 - nine words read better than nine quoted strings
    "digital_signature content_commitment key_encipherment data_encipherment key_agreement "
    "key_cert_sign crl_sign encipher_only decipher_only"
).split()


@dataclass(frozen=True)
class CertPaths:
    """Where one identity's certificate and private key are."""

    cert: Path
    key: Path


class PKI:
    """A certificate authority and the certificates it issued, in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (PEM), the trust anchor every broker and device loads."""
        return self.directory / "ca" / "ca.pem"

    @property
    def crl(self) -> Path:
        """The CRL (PEM) signed by the CA."""
        return self.directory / "crl.pem"

    @property
    def _ca_key(self) -> Path:
        return self.directory / "ca" / "ca.key"

    @property
    def _index(self) -> Path:
        return self.directory / "index.json"

    def exists(self) -> bool:
        """True when the CA (certificate and key) and the CRL are present."""
        return self.ca_cert.exists() and self._ca_key.exists() and self.crl.exists()

    def init(self, servers: dict[str, list[str]], clients: list[str]) -> list[str]:
        """Create what is missing: the CA, each server (name -> extra hostnames) and client
        certificate, and the CRL. Existing files are kept as they are, revoked ones too (see
        `issue_client`). Returns the names created, "ca" first when the CA was."""
        wanted = [(name, "server", hosts) for name, hosts in servers.items()]
        wanted += [(name, "client", []) for name in clients]
        for name, _, _ in wanted:
            _check_name(name)
        if both := sorted(set(servers) & set(clients)):
            raise PKIError(f"{both[0]!r} is listed as both a server and a client; rename one")
        created: list[str] = []
        with self._locked():
            if not self.ca_cert.exists():
                leftovers = [p for sub in _KINDS.values() for p in (self.directory / sub).glob("*")]
                if leftovers:
                    raise PKIError(
                        f"{self.ca_cert} is missing but {leftovers[0]} exists; restore the CA or "
                        f"delete {self.directory} to start a new PKI"
                    )
                self._create_ca()
                created.append("ca")
            index = self._load_index()
            before = json.dumps(index, sort_keys=True)
            for name, kind, hosts in wanted:
                entry = index.get(name)
                if entry is not None and entry["kind"] != kind:
                    raise PKIError(f"{name!r} is already a {entry['kind']}; pick another name")
                cert_path = self._paths(kind, name).cert
                if cert_path.exists() and kind == "server":
                    _check_sans(cert_path, name, hosts)
                # A revoked identity comes back only through issue_client, never as a side effect.
                if cert_path.exists() or (entry is not None and entry["revoked"]):
                    continue
                cert = self._issue(name, kind, hosts)
                index[name] = {"kind": kind, "serial": cert.serial_number, "revoked": False}
                created.append(name)
            entries, number, next_update = self._read_crl()
            if next_update is None or next_update - _now() < CRL_RENEW_BEFORE:
                self._sign_crl(entries, number + 1)
            if not self._index.exists() or json.dumps(index, sort_keys=True) != before:
                self._save_index(index)
        return created

    def server(self, name: str) -> CertPaths:
        """The certificate and key of broker `name`."""
        return self._existing("server", name)

    def client(self, name: str) -> CertPaths:
        """The certificate and key of device (MQTT identity) `name`."""
        return self._existing("client", name)

    def issue_client(self, name: str) -> CertPaths:
        """Issue a client certificate, or a fresh key and certificate for a revoked one."""
        _check_name(name)
        with self._locked():
            self._require_ca()
            index = self._load_index()
            entry = index.get(name)
            if entry is not None and entry["kind"] != "client":
                raise PKIError(f"{name!r} is already a {entry['kind']}; pick another name")
            if entry is not None and not entry["revoked"]:
                raise PKIError(
                    f"client {name!r} already has a valid certificate; revoke it first "
                    f"(`fmb certs revoke {name}`) to replace it"
                )
            cert = self._issue(name, "client", [])
            index[name] = {"kind": "client", "serial": cert.serial_number, "revoked": False}
            self._save_index(index)
        return self._paths("client", name)

    def rotate(self, name: str, revoke_old: bool = False) -> tuple[int, int]:
        """A new key and certificate for `name` (client or server), keeping its hostnames; the old
        certificate stays valid unless `revoke_old`. Returns (old serial, new serial)."""
        _check_name(name)
        with self._locked():
            self._require_ca()
            index = self._load_index()
            entry = index.get(name)
            if entry is None or entry["revoked"]:
                raise PKIError(f"{name!r} has no valid certificate to rotate; after a revocation use "
                               f"`fmb certs reissue {name}`")
            hosts: list[str] = []
            if entry["kind"] == "server":
                old_cert = _load_cert(self._paths("server", name).cert)
                sans = old_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                hosts = [h for h in sans.get_values_for_type(x509.DNSName) if h not in ("localhost", name)]
                hosts += [str(ip) for ip in sans.get_values_for_type(x509.IPAddress) if str(ip) != "127.0.0.1"]
            old = int(entry["serial"])
            cert = self._issue(name, entry["kind"], hosts)
            index[name] = {"kind": entry["kind"], "serial": cert.serial_number, "revoked": False}
            if revoke_old:
                entries, number, _ = self._read_crl()
                entries[old] = _now()
                self._sign_crl(entries, number + 1)
            self._save_index(index)
        return old, cert.serial_number

    def revoke(self, name: str) -> int:
        """Put the current certificate of `name` on the CRL and return its serial. Brokers see
        the change on their next CRL load (SIGHUP); revoking twice changes nothing."""
        with self._locked():
            index = self._load_index()
            entry = self._entry(index, name)
            if not entry["revoked"]:
                entries, number, _ = self._read_crl()
                entries.setdefault(entry["serial"], _now())
                self._sign_crl(entries, number + 1)  # CRL first: a crash leaves it stricter
                entry["revoked"] = True
                self._save_index(index)
        return int(entry["serial"])

    def is_revoked(self, name: str) -> bool:
        """Whether the current certificate of `name` is revoked."""
        return bool(self._entry(self._load_index(), name)["revoked"])

    def certificates(self) -> list[dict[str, Any]]:
        """Inventory: one dict per certificate with name, kind (ca/server/client), serial,
        subject, not_after (ISO 8601) and revoked, the CA first."""
        self._require_ca()
        index = self._load_index()
        rows = [("ca", "ca", self.ca_cert)]
        rows += [(name, e["kind"], self._paths(e["kind"], name).cert) for name, e in index.items()]
        inventory = []
        for name, kind, path in sorted(rows, key=lambda row: (row[0] != "ca", row[0])):
            cert = _load_cert(path)
            inventory.append(
                {
                    "name": name,
                    "kind": kind,
                    "serial": cert.serial_number,
                    "subject": cert.subject.rfc4514_string(),
                    "not_after": cert.not_valid_after_utc.isoformat(),
                    "revoked": index.get(name, {}).get("revoked", False),
                }
            )
        return inventory

    # -- internals -------------------------------------------------------------------------------

    def _paths(self, kind: str, name: str) -> CertPaths:
        folder = self.directory / _KINDS[kind]
        return CertPaths(cert=folder / f"{name}.pem", key=folder / f"{name}.key")

    def _existing(self, kind: str, name: str) -> CertPaths:
        paths = self._paths(kind, name)
        if not paths.cert.exists():
            raise PKIError(f"{kind} {name!r}: {paths.cert} is missing; run `fmb certs init`")
        if not paths.key.exists():
            raise PKIError(
                f"{kind} {name!r}: {paths.key} is missing; delete {paths.cert} too and run "
                "`fmb certs init` to reissue both"
            )
        return paths

    def _entry(self, index: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
        if name not in index:
            known = ", ".join(sorted(index)) or "none yet; run `fmb certs init`"
            raise PKIError(f"no certificate named {name!r} in {self.directory} (known: {known})")
        return index[name]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers (a CLI revoke during a run, say) with an advisory lock."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _require_ca(self) -> None:
        if not (self.ca_cert.exists() and self._ca_key.exists()):
            raise PKIError(f"no certificate authority in {self.directory}; run `fmb certs init`")

    def _load_ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        self._require_ca()
        try:
            key = serialization.load_pem_private_key(self._ca_key.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise PKIError(f"{self._ca_key} is unreadable ({exc}); restore it") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PKIError(f"{self._ca_key} is not an EC key; restore the CA's own key")
        return key, _load_cert(self.ca_cert)

    def _create_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        # A random suffix tells two testbeds' CAs apart in logs and in `openssl x509 -issuer`.
        subject = _subject(f"fmb-testbed CA {secrets.token_hex(3)}")
        constraints = x509.BasicConstraints(ca=True, path_length=0)  # no intermediate CAs
        usage = _key_usage(key_cert_sign=True, crl_sign=True)
        cert = _sign(subject, key.public_key(), subject, key, CA_VALIDITY, [constraints, usage])
        (self.directory / "ca").mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory / "ca", 0o700)
        write_atomic(self._ca_key, _key_pem(key), 0o600)
        write_atomic(self.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def _issue(self, name: str, kind: str, hosts: list[str]) -> x509.Certificate:
        ca_key, ca_cert = self._load_ca()
        key = ec.generate_private_key(ec.SECP256R1())
        server = kind == "server"
        extensions: list[x509.ExtensionType] = [
            x509.BasicConstraints(ca=False, path_length=None),
            _key_usage(digital_signature=True, key_agreement=True),
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
        ]
        if server:
            sans = _general_names(["localhost", "127.0.0.1", name, *hosts])
            extensions.append(x509.SubjectAlternativeName(sans))
        # A leaf never outlives its CA: clients would reject it from that day on anyway.
        validity = min(LEAF_VALIDITY, ca_cert.not_valid_after_utc - _now())
        cert = _sign(
            _subject(name), key.public_key(), ca_cert.subject, ca_key, validity, extensions
        )
        paths = self._paths(kind, name)
        paths.cert.parent.mkdir(parents=True, exist_ok=True)
        # Key first: a certificate on disk always has its key next to it.
        write_atomic(paths.key, _key_pem(key), 0o600)
        write_atomic(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cert

    def _read_crl(self) -> tuple[dict[int, dt.datetime], int, dt.datetime | None]:
        """Revoked serials with their dates, the CRL number and next_update (None: no CRL)."""
        if not self.crl.exists():
            return {}, 0, None
        try:
            crl = x509.load_pem_x509_crl(self.crl.read_bytes())
        except (OSError, ValueError) as exc:
            raise PKIError(f"{self.crl} is unreadable ({exc}); restore it from a backup") from None
        ca_key, _ = self._load_ca()
        if not crl.is_signature_valid(ca_key.public_key()):
            raise PKIError(f"{self.crl} was not signed by {self.ca_cert}; restore the matching CRL")
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        entries = {r.serial_number: r.revocation_date_utc for r in crl}
        return entries, number, crl.next_update_utc

    def _sign_crl(self, entries: dict[int, dt.datetime], number: int) -> None:
        ca_key, ca_cert = self._load_ca()
        this_update = _now() - CLOCK_SKEW
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(this_update)
            .next_update(this_update + CLOCK_SKEW + CRL_VALIDITY)
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(_aki(ca_key), critical=False)
        )
        for serial, when in sorted(entries.items()):
            # A CRL cannot know of a revocation after its own (backdated) issue time.
            date = min(when, this_update)
            revoked = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(date)
            builder = builder.add_revoked_certificate(revoked.build())
        crl = builder.sign(ca_key, hashes.SHA256())
        write_atomic(self.crl, crl.public_bytes(serialization.Encoding.PEM), 0o644)

    def _load_index(self) -> dict[str, dict[str, Any]]:
        if self._index.exists():
            try:
                index: dict[str, dict[str, Any]] = json.loads(self._index.read_text())
                return index
            except ValueError:
                raise PKIError(
                    f"{self._index} is corrupt; delete it and it is rebuilt from the certificates"
                ) from None
        revoked = set(self._read_crl()[0]) if self.ca_cert.exists() else set()
        index = {}
        for kind, folder in _KINDS.items():
            for path in sorted((self.directory / folder).glob("*.pem")):
                serial = _load_cert(path).serial_number
                index[path.stem] = {"kind": kind, "serial": serial, "revoked": serial in revoked}
        return index

    def _save_index(self, index: dict[str, dict[str, Any]]) -> None:
        data = json.dumps(index, indent=2, sort_keys=True) + "\n"
        write_atomic(self._index, data.encode(), 0o644)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name) or name == "ca":
        raise PKIError(
            f"certificate name {name!r} is not usable: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (and not 'ca')"
        )


def _check_sans(path: Path, name: str, hosts: list[str]) -> None:
    """Refuse a kept server certificate that no longer covers the hostnames asked for."""
    have = _load_cert(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    missing = [n.value for n in _general_names([name, *hosts]) if n not in have]
    if missing:
        raise PKIError(
            f"{path} does not cover {', '.join(map(str, missing))}; delete {path} and its key "
            "and run `fmb certs init` again to reissue it"
        )


def _subject(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _general_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):  # ordered, without duplicates
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _key_usage(**flags: bool) -> x509.KeyUsage:
    return x509.KeyUsage(**{field: flags.get(field, False) for field in _KEY_USAGES})


def _aki(issuer_key: ec.EllipticCurvePrivateKey) -> x509.AuthorityKeyIdentifier:
    # Same key id as the issuer's SubjectKeyIdentifier, which `_sign` derives from the same key.
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())


def _sign(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    validity: dt.timedelta,
    extensions: list[x509.ExtensionType],
) -> x509.Certificate:
    """Sign a certificate with a random serial, SKI and AKI; constraints and usage critical."""
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
    )
    for extension in [*extensions, x509.SubjectKeyIdentifier.from_public_key(public_key)]:
        critical = isinstance(extension, x509.BasicConstraints | x509.KeyUsage)
        builder = builder.add_extension(extension, critical=critical)
    return builder.add_extension(_aki(issuer_key), critical=False).sign(issuer_key, hashes.SHA256())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PKIError(f"cannot read certificate {path} ({exc}); run `fmb certs init`") from None


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write through a new temporary file that has `mode` from its creation, then rename it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # the umask may have narrowed a certificate's 0644
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def spki_pin(cert: Path) -> str:
    """The base64 SHA-256 of a certificate's public key: what Chromium's
    ``--ignore-certificate-errors-spki-list`` takes to trust exactly that key (the tablet's console)."""
    der = _load_cert(cert).public_key().public_bytes(serialization.Encoding.DER,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()
