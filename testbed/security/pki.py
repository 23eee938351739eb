"""The testbed's public-key infrastructure: a root certificate authority per directory, made with
the `cryptography` package, that issues a server certificate per broker and a client certificate
per device (the certificate's CN is the device's MQTT identity), optionally through intermediate
CAs (one per substation), and the certificate revocation lists that Mosquitto (`crlfile`) and
Python's `ssl` both check. Keys are EC P-256 and are written 0600 from the moment they exist; every
file is replaced by an atomic rename, so a reader never sees half a certificate. `index.json` maps
each name to its kind, issuer, serial and revocation state; it is the record of what was issued
(a certificate file it does not list is reissued), and is rebuilt from the files and the CRLs when
it is missing. Signing itself is `testbed.security.mint`'s.

Layout: ``ca/ca.pem``, ``ca/ca.key`` (the root); ``intermediates/<name>.pem|.key``;
``servers/<name>.pem|.key``; ``clients/<name>.pem|.key`` (under an intermediate, the ``.pem`` is
the leaf followed by the intermediate: the chain the client presents); ``crl.pem``: the root's CRL
then each intermediate's, since Mosquitto's ``crlfile`` turns on ``X509_V_FLAG_CRL_CHECK``, which
needs the CRL of every leaf's issuer (Mosquitto 2.0 loads every CRL of the file).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from testbed.core.errors import PKIError
from testbed.security.mint import (
    CLOCK_SKEW,
    Issuer,
    aki,
    check_name,
    general_names,
    key_pem,
    key_usage,
    leaf_serial,
    load_cert,
    now,
    sign,
    subject,
    write_file,
)

__all__ = ["PKI", "CertPaths", "spki_pin", "write_atomic"]

CA_VALIDITY = dt.timedelta(days=3652)
CRL_VALIDITY = dt.timedelta(days=365)
# OpenSSL refuses every handshake once the CRL's next_update has passed, so init re-signs early.
CRL_RENEW_BEFORE = dt.timedelta(days=30)
ROOT = "ca"  # the issuer name of what the root signs directly
_KINDS = {"server": "servers", "client": "clients", "intermediate": "intermediates"}
_CRL_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----\n?", re.S)


@dataclass(frozen=True)
class CertPaths:
    """Where one identity's certificate and private key are."""

    cert: Path
    key: Path


@dataclass
class _Crl:
    """One issuer's CRL as read: revoked serials with dates, CRL number, next update, its PEM."""

    entries: dict[int, dt.datetime]
    number: int
    next_update: dt.datetime | None
    pem: bytes


class _Signers(dict[str, Issuer]):
    """Issuers by name, each loaded from its files the first time it is asked for."""

    def __init__(self, load: Callable[[str], Issuer]) -> None:
        super().__init__()
        self._load = load

    def __missing__(self, name: str) -> Issuer:
        self[name] = issuer = self._load(name)
        return issuer


class PKI:
    """A certificate authority, its intermediates and the certificates they issued, in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @property
    def ca_cert(self) -> Path:
        """The root CA certificate (PEM), the trust anchor every broker and device loads."""
        return self.directory / "ca" / "ca.pem"

    @property
    def crl(self) -> Path:
        """The CRLs (PEM): the root's, then every intermediate's."""
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

    def init(
        self,
        servers: dict[str, list[str]],
        clients: list[str],
        issuers: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Create what is missing: the CA, each server (name -> extra hostnames) and client
        certificate, and the CRLs. `issuers` maps a client to the intermediate CA that issues it
        (e.g. ``"sub-001-ca"``), created under the root when missing; other clients and every
        server are issued by the root. Existing certificates are kept, revoked ones too (see
        `issue_client`). In bulk: one lock, one read of each CA, one sync and one index write.
        Returns the names created, "ca" first when the CA was, intermediates before leaves."""
        issuers = dict(issuers or {})
        wanted = [(name, "server", hosts) for name, hosts in servers.items()]
        wanted += [(name, "client", []) for name in clients]
        self._check_request(servers, clients, issuers)
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
                created.append(ROOT)
            index = self._load_index()
            changed = not self._index.exists()
            # One directory listing per kind instead of a stat per name: re-runs stay fast.
            present = {kind: _listing(self.directory / folder) for kind, folder in _KINDS.items()}
            signers = _Signers(self._signer)  # each CA's key read once, whatever it signs
            for ca_name in sorted(set(issuers.values())):
                entry = index.get(ca_name)
                if entry is not None and entry["kind"] != "intermediate":
                    raise PKIError(f"issuer {ca_name!r} is already a {entry['kind']}; name the "
                                   "intermediate CA something else (e.g. '<site>-ca')")
                if entry is not None and f"{ca_name}.pem" not in present["intermediate"]:
                    # A new key would orphan its CRL and every certificate it issued.
                    raise PKIError(f"intermediate CA {ca_name!r} is in {self._index} but "
                                   f"{self._paths('intermediate', ca_name).cert} is missing; restore "
                                   "it and its key from a backup")
                if entry is None:
                    index[ca_name] = self._create_intermediate(ca_name, signers[ROOT])
                    created.append(ca_name)
                    changed = True
            for name, kind, hosts in wanted:
                entry = index.get(name)
                if entry is not None and entry["kind"] != kind:
                    raise PKIError(f"{name!r} is already a {entry['kind']}; pick another name")
                issuer = issuers.get(name, ROOT)
                if entry is not None and f"{name}.pem" in present[kind]:
                    if kind == "server":
                        _check_sans(self._paths(kind, name).cert, name, hosts)
                    if entry.get("issuer", ROOT) != issuer:
                        raise PKIError(
                            f"client {name!r} was issued by {entry.get('issuer', ROOT)!r}, not "
                            f"{issuer!r}; to move it, revoke it (`fmb certs revoke {name}`) and "
                            f"delete {self._paths(kind, name).cert} and its key, or keep its issuer"
                        )
                    continue
                # A revoked identity comes back only through issue_client, never as a side effect.
                if entry is not None and entry["revoked"]:
                    continue
                index[name] = self._issue(issuer, signers[issuer], name, kind, hosts, entry, sync=False)
                created.append(name)
                changed = True
            if created:
                os.sync()  # one flush for every file written: an fsync each is what bulk costs
            self._refresh_crls(index, signers)
            if changed:
                self._save_index(index)
        return created

    def server(self, name: str) -> CertPaths:
        """The certificate and key of broker `name`."""
        return self._existing("server", name)

    def client(self, name: str) -> CertPaths:
        """The certificate (with its chain, under an intermediate) and key of device `name`."""
        return self._existing("client", name)

    def intermediate(self, name: str) -> CertPaths:
        """The certificate and key of intermediate CA `name`: what a substation needs to mint
        its own devices (`Issuer.load(paths.cert, paths.key).mint(...)`)."""
        index = self._load_index()
        if index.get(name, {}).get("kind") != "intermediate":
            known = ", ".join(sorted(n for n, e in index.items() if e["kind"] == "intermediate"))
            raise PKIError(f"no intermediate CA named {name!r} in {self.directory} "
                           f"(known: {known or 'none; give init an issuers mapping'})")
        return self._existing("intermediate", name)

    def issuer_of(self, name: str) -> str:
        """The name of the CA that issued `name`'s certificate ("ca" for the root)."""
        return str(self._entry(self._load_index(), name).get("issuer", ROOT))

    def issue_client(self, name: str) -> CertPaths:
        """Issue a client certificate, or a fresh key and certificate for a revoked one (by the
        same issuer as before)."""
        check_name(name)
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
            issuer = entry.get("issuer", ROOT) if entry else ROOT
            index[name] = self._issue(issuer, self._signer(issuer), name, "client", [], entry)
            self._save_index(index)
        return self._paths("client", name)

    def rotate(self, name: str, revoke_old: bool = False) -> tuple[int, int]:
        """A new key and certificate for `name` (client or server), keeping its hostnames and
        issuer; the old certificate stays valid unless `revoke_old`. Returns (old serial, new serial)."""
        check_name(name)
        with self._locked():
            self._require_ca()
            index = self._load_index()
            entry = index.get(name)
            if entry is None or entry["revoked"] or entry["kind"] == "intermediate":
                raise PKIError(f"{name!r} has no valid device or broker certificate to rotate; after a "
                               f"revocation use `fmb certs reissue {name}`")
            hosts: list[str] = []
            if entry["kind"] == "server":
                old_cert = load_cert(self._paths("server", name).cert)
                sans = old_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                hosts = [h for h in sans.get_values_for_type(x509.DNSName) if h not in ("localhost", name)]
                hosts += [str(ip) for ip in sans.get_values_for_type(x509.IPAddress) if str(ip) != "127.0.0.1"]
            old = int(entry["serial"])
            issuer = entry.get("issuer", ROOT)
            index[name] = self._issue(issuer, self._signer(issuer), name, entry["kind"], hosts, entry)
            if revoke_old:
                self._add_to_crl(index, issuer, old)
            self._save_index(index)
        return old, int(index[name]["serial"])

    def revoke(self, name: str) -> int:
        """Put the current certificate of `name` on its issuer's CRL and return its serial.
        Brokers see the change on their next CRL load (SIGHUP); revoking twice changes nothing."""
        with self._locked():
            index = self._load_index()
            entry = self._entry(index, name)
            if entry["kind"] == "intermediate":
                raise PKIError(
                    f"{name!r} is an intermediate CA: Mosquitto checks only a leaf's CRL, so revoking "
                    "a CA would not cut its devices off; revoke the devices it issued"
                )
            if not entry["revoked"]:
                # CRL first: a crash leaves it stricter.
                self._add_to_crl(index, entry.get("issuer", ROOT), int(entry["serial"]))
                entry["revoked"] = True
                self._save_index(index)
        return int(entry["serial"])

    def is_revoked(self, name: str) -> bool:
        """Whether the current certificate of `name` is revoked."""
        return bool(self._entry(self._load_index(), name)["revoked"])

    def certificates(self) -> list[dict[str, Any]]:
        """Inventory: one dict per certificate with name, kind (ca/intermediate/server/client),
        issuer, serial, subject, not_after (ISO 8601) and revoked, the CA first."""
        self._require_ca()
        index = self._load_index()
        rows = [(ROOT, ROOT, self.ca_cert)]
        rows += [(name, e["kind"], self._paths(e["kind"], name).cert) for name, e in index.items()]
        inventory = []
        for name, kind, path in sorted(rows, key=lambda row: (row[0] != ROOT, row[0])):
            cert = load_cert(path)
            inventory.append(
                {
                    "name": name,
                    "kind": kind,
                    "issuer": index.get(name, {}).get("issuer", ROOT) if kind != ROOT else ROOT,
                    "serial": cert.serial_number,
                    "subject": cert.subject.rfc4514_string(),
                    "not_after": cert.not_valid_after_utc.isoformat(),
                    "revoked": index.get(name, {}).get("revoked", False),
                }
            )
        return inventory

    # -- internals -------------------------------------------------------------------------------

    def _check_request(
        self, servers: dict[str, list[str]], clients: list[str], issuers: dict[str, str]
    ) -> None:
        for name in [*servers, *clients, *issuers.values()]:
            check_name(name)
        if both := sorted(set(servers) & set(clients)):
            raise PKIError(f"{both[0]!r} is listed as both a server and a client; rename one")
        if strays := sorted(set(issuers) - set(clients)):
            raise PKIError(f"issuers maps {strays[0]!r}, which is not among the clients; "
                           "add it to the clients or drop it from the mapping")
        if clash := sorted(set(issuers.values()) & (set(servers) | set(clients))):
            raise PKIError(f"intermediate CA {clash[0]!r} has the name of a broker or device; "
                           "name it after its site (e.g. '<site>-ca')")

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
            known = sorted(index)
            listed = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
            raise PKIError(f"no certificate named {name!r} in {self.directory} "
                           f"(known: {listed or 'none yet; run `fmb certs init`'})")
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

    def _signer(self, issuer: str) -> Issuer:
        """The root or intermediate `issuer`, key loaded, ready to sign."""
        self._require_ca()
        if issuer == ROOT:
            return Issuer.load(self.ca_cert, self._ca_key, intermediate=False)
        paths = self._existing("intermediate", issuer)
        return Issuer.load(paths.cert, paths.key)

    def _issuer_certs(self, index: dict[str, dict[str, Any]]) -> dict[str, x509.Certificate]:
        certs = {ROOT: load_cert(self.ca_cert)}
        for name, entry in index.items():
            if entry["kind"] == "intermediate":
                certs[name] = load_cert(self._paths("intermediate", name).cert)
        return certs

    def _create_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        # A random suffix tells two testbeds' CAs apart in logs and in `openssl x509 -issuer`.
        name = subject(f"fmb-testbed CA {secrets.token_hex(3)}")
        constraints = x509.BasicConstraints(ca=True, path_length=1)  # one level of intermediates
        usage = key_usage(key_cert_sign=True, crl_sign=True)
        cert = sign(name, key.public_key(), name, key, CA_VALIDITY, [constraints, usage])
        (self.directory / "ca").mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory / "ca", 0o700)
        write_atomic(self._ca_key, key_pem(key), 0o600)
        write_atomic(self.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def _create_intermediate(self, name: str, root: Issuer) -> dict[str, Any]:
        path_length = root.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
        if path_length is not None and path_length < 1:
            raise PKIError(f"{self.ca_cert} allows no intermediate CAs (made before they existed); "
                           f"delete {self.directory} to start a new PKI, or issue without issuers")
        key = ec.generate_private_key(ec.SECP256R1())
        root_suffix = root.name.rsplit(" ", 1)[-1]  # ties the intermediate to its root in logs
        extensions: list[x509.ExtensionType] = [
            x509.BasicConstraints(ca=True, path_length=0),
            key_usage(key_cert_sign=True, crl_sign=True),
        ]
        validity = root.cert.not_valid_after_utc - now()
        cert = sign(subject(f"fmb-testbed {name} {root_suffix}"), key.public_key(), root.cert.subject,
                    root.key, validity, extensions)
        paths = self._paths("intermediate", name)
        paths.cert.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(paths.cert.parent, 0o700)
        write_atomic(paths.key, key_pem(key), 0o600)
        write_atomic(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return {"kind": "intermediate", "issuer": ROOT, "serial": cert.serial_number, "revoked": False}

    def _issue(
        self, issuer: str, signer: Issuer, name: str, kind: str, hosts: list[str],
        previous: dict[str, Any] | None, sync: bool = True,
    ) -> dict[str, Any]:
        """Issue `name` by `signer` (named `issuer`) and return its index entry. Under an intermediate the serial
        is `leaf_serial`'s, one generation past the previous certificate's."""
        entry: dict[str, Any] = {"kind": kind, "revoked": False}
        serial = None
        if issuer != ROOT:
            generation = int(previous.get("generation", -1)) + 1 if previous else 0
            serial = leaf_serial(signer.cert, name, generation)
            entry |= {"issuer": issuer, "generation": generation}
        key, cert = signer.sign_leaf(name, kind, hosts, serial)
        signer.write_leaf(self.directory / _KINDS[kind], name, key, cert, sync)
        entry["serial"] = cert.serial_number
        return entry

    def _read_crls(self, index: dict[str, dict[str, Any]]) -> dict[str, _Crl]:
        """Each issuer's CRL, checked against the issuer's certificate; none when crl.pem is absent."""
        if not self.crl.exists():
            return {}
        issuers = self._issuer_certs(index)
        crls: dict[str, _Crl] = {}
        try:
            blocks = _CRL_BLOCK.findall(self.crl.read_bytes())
            parsed = [(block, x509.load_pem_x509_crl(block)) for block in blocks]
        except (OSError, ValueError) as exc:
            raise PKIError(f"{self.crl} is unreadable ({exc}); restore it from a backup") from None
        if not parsed:
            raise PKIError(f"{self.crl} holds no CRL; restore it from a backup")
        for block, crl in parsed:
            name = next((n for n, c in issuers.items() if c.subject == crl.issuer), None)
            public = issuers[name].public_key() if name else None
            if name is None or not isinstance(public, ec.EllipticCurvePublicKey) or \
                    not crl.is_signature_valid(public):
                raise PKIError(f"{self.crl} holds a CRL signed by no CA of {self.directory} "
                               f"({crl.issuer.rfc4514_string()}); restore the matching CRL")
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
            entries = {r.serial_number: r.revocation_date_utc for r in crl}
            crls[name] = _Crl(entries, number, crl.next_update_utc, block)
        return crls

    def _refresh_crls(self, index: dict[str, dict[str, Any]], signers: _Signers) -> None:
        """Sign a CRL for every issuer that has none or whose CRL nears its next update."""
        crls = self._read_crls(index)
        issuers = [ROOT, *sorted(n for n, e in index.items() if e["kind"] == "intermediate")]
        renew_by = now() + CRL_RENEW_BEFORE
        stale = [n for n in issuers if (n not in crls or (due := crls[n].next_update) is None
                                        or due < renew_by)]
        for name in stale:
            old = crls.get(name, _Crl({}, 0, None, b""))
            pem = _sign_crl(signers[name], old.entries, old.number + 1)
            crls[name] = _Crl(old.entries, old.number + 1, None, pem)
        if stale:
            self._write_crls(crls, issuers)

    def _add_to_crl(self, index: dict[str, dict[str, Any]], issuer: str, serial: int) -> None:
        crls = self._read_crls(index)
        old = crls.get(issuer, _Crl({}, 0, None, b""))
        entries = old.entries | {serial: old.entries.get(serial, now())}
        pem = _sign_crl(self._signer(issuer), entries, old.number + 1)
        crls[issuer] = _Crl(entries, old.number + 1, None, pem)
        self._write_crls(crls, [ROOT, *sorted(n for n in crls if n != ROOT)])

    def _write_crls(self, crls: dict[str, _Crl], order: list[str]) -> None:
        data = b"".join(crls[name].pem for name in order if name in crls)
        write_atomic(self.crl, data, 0o644)

    def _load_index(self) -> dict[str, dict[str, Any]]:
        if self._index.exists():
            try:
                index: dict[str, dict[str, Any]] = json.loads(self._index.read_text())
                return index
            except ValueError:
                raise PKIError(
                    f"{self._index} is corrupt; delete it and it is rebuilt from the certificates"
                ) from None
        return self._rebuild_index()

    def _rebuild_index(self) -> dict[str, dict[str, Any]]:
        """The index from the certificate files and the CRLs (when index.json is lost)."""
        index: dict[str, dict[str, Any]] = {}
        for path in sorted((self.directory / "intermediates").glob("*.pem")):
            serial = load_cert(path).serial_number
            index[path.stem] = {"kind": "intermediate", "issuer": ROOT, "serial": serial, "revoked": False}
        if not self.ca_cert.exists():
            return index
        issuers = self._issuer_certs(index)
        by_subject = {cert.subject: name for name, cert in issuers.items()}
        revoked = {name: set(crl.entries) for name, crl in self._read_crls(index).items()}
        for kind in ("server", "client"):
            for path in sorted((self.directory / _KINDS[kind]).glob("*.pem")):
                cert = load_cert(path)
                issuer = by_subject.get(cert.issuer, ROOT)
                entry: dict[str, Any] = {"kind": kind, "serial": cert.serial_number,
                                         "revoked": cert.serial_number in revoked.get(issuer, set())}
                if issuer != ROOT:
                    entry["issuer"] = issuer
                    generation = next((g for g in range(1000) if leaf_serial(
                        issuers[issuer], path.stem, g) == cert.serial_number), None)
                    if generation is not None:
                        entry["generation"] = generation
                index[path.stem] = entry
        return index

    def _save_index(self, index: dict[str, dict[str, Any]]) -> None:
        data = json.dumps(index, indent=2, sort_keys=True) + "\n"
        write_atomic(self._index, data.encode(), 0o644)


def _listing(folder: Path) -> frozenset[str]:
    try:
        return frozenset(os.listdir(folder))
    except FileNotFoundError:
        return frozenset()


def _sign_crl(issuer: Issuer, entries: dict[int, dt.datetime], number: int) -> bytes:
    this_update = now() - CLOCK_SKEW
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(this_update)
        .next_update(this_update + CLOCK_SKEW + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(aki(issuer.key), critical=False)
    )
    for serial, when in sorted(entries.items()):
        # A CRL cannot know of a revocation after its own (backdated) issue time.
        date = min(when, this_update)
        revoked = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(date)
        builder = builder.add_revoked_certificate(revoked.build())
    return builder.sign(issuer.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _check_sans(path: Path, name: str, hosts: list[str]) -> None:
    """Refuse a kept server certificate that no longer covers the hostnames asked for."""
    have = load_cert(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    missing = [n.value for n in general_names([name, *hosts]) if n not in have]
    if missing:
        raise PKIError(
            f"{path} does not cover {', '.join(map(str, missing))}; delete {path} and its key "
            "and run `fmb certs init` again to reissue it"
        )


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write through a new temporary file that has `mode` from its creation, fsync, then rename it."""
    write_file(path, data, mode, sync=True)


def spki_pin(cert: Path) -> str:
    """The base64 SHA-256 of a certificate's public key: what Chromium's
    ``--ignore-certificate-errors-spki-list`` takes to trust exactly that key (the tablet's console)."""
    der = load_cert(cert).public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()
