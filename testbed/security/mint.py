"""Minting certificates: an `Issuer` (a CA's key and certificate, the root or a substation's
intermediate) signs leaf certificates for brokers and devices, in bulk and wherever its key is.
`testbed.security.pki` keeps the records (index, CRLs); this module only signs and writes, so a
substation's fleet can mint its own devices from its intermediate alone (`Issuer.mint`), and the
central PKI can still revoke them: under an intermediate a device's serial is derived from the
intermediate, the device's name and a generation number (`leaf_serial`), which both sides know.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testbed.core.errors import PKIError

__all__ = ["Issuer", "aki", "check_name", "general_names", "key_pem", "key_usage", "leaf_serial", "load_cert", "now",
           "sign", "subject", "write_file"]

LEAF_VALIDITY = dt.timedelta(days=730)
# Backdate validity starts a little, so a peer whose clock lags does not see "not yet valid".
CLOCK_SKEW = dt.timedelta(minutes=5)
_KEY_USAGES = (  # noqa: SIM905 - nine words read better than nine quoted strings
    "digital_signature content_commitment key_encipherment data_encipherment key_agreement "
    "key_cert_sign crl_sign encipher_only decipher_only"
).split()


def leaf_serial(issuer: x509.Certificate, name: str, generation: int) -> int:
    """The serial of device `name`'s certificate number `generation` under intermediate `issuer`:
    every minting of that generation, central or local, has it, so one CRL entry revokes them all
    (a reissue is the next generation). Keyed by the issuer's key id: unguessable without it."""
    key_id = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    digest = hmac.new(key_id, f"{name}\0{generation}".encode(), hashlib.sha256).digest()
    # RFC 5280: positive, at most 20 octets; 152 bits with the top one set is both.
    return int.from_bytes(digest[:19]) | (1 << 151)


@dataclass(frozen=True)
class Issuer:
    """A certificate authority able to sign: its private key, its certificate, and the PEM of
    the certificates a leaf must present with its own (the intermediate itself; none for the root)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    chain: bytes = b""

    @classmethod
    def load(cls, cert: Path, key: Path, intermediate: bool = True) -> Issuer:
        """An issuer from its certificate and key files; refuses a non-CA or a key of another
        certificate with one line that says which file to fix."""
        certificate = load_cert(cert)
        try:
            private = serialization.load_pem_private_key(key.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise PKIError(f"{key} is unreadable ({exc}); restore it") from None
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise PKIError(f"{key} is not an EC key; restore the CA's own key")
        if private.public_key() != certificate.public_key():
            raise PKIError(f"{key} is not the key of {cert}; restore the matching pair")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = x509.BasicConstraints(ca=False, path_length=None)
        if not constraints.ca:
            raise PKIError(f"{cert} is not a CA certificate; give an intermediate CA's certificate")
        chain = certificate.public_bytes(serialization.Encoding.PEM) if intermediate else b""
        return cls(private, certificate, chain)

    @property
    def name(self) -> str:
        """The issuer's common name."""
        return str(self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)

    def sign_leaf(
        self, name: str, kind: str, hosts: list[str], serial: int | None = None
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A new key and a certificate for `name`: a client (CN = MQTT identity) or a server
        (with `hosts` and localhost as subject alternative names)."""
        key = ec.generate_private_key(ec.SECP256R1())
        server = kind == "server"
        extensions: list[x509.ExtensionType] = [
            x509.BasicConstraints(ca=False, path_length=None),
            key_usage(digital_signature=True, key_agreement=True),
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
        ]
        if server:
            sans = general_names(["localhost", "127.0.0.1", name, *hosts])
            extensions.append(x509.SubjectAlternativeName(sans))
        # A leaf never outlives its issuer: peers would reject it from that day on anyway.
        validity = min(LEAF_VALIDITY, self.cert.not_valid_after_utc - now())
        cert = sign(subject(name), key.public_key(), self.cert.subject, self.key, validity, extensions, serial)
        return key, cert

    def write_leaf(
        self, directory: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate,
        sync: bool = True,
    ) -> None:
        """Write `<name>.key` (0600) then `<name>.pem` (the leaf followed by the chain), so a
        certificate on disk always has its key beside it. Without `sync` nothing is fsynced:
        bulk callers sync once at the end."""
        directory.mkdir(parents=True, exist_ok=True)
        write_file(directory / f"{name}.key", key_pem(key), 0o600, sync)
        pem = cert.public_bytes(serialization.Encoding.PEM) + self.chain
        write_file(directory / f"{name}.pem", pem, 0o644, sync)

    def mint(self, names: list[str], directory: Path, generation: int = 0) -> dict[str, int]:
        """Mint client certificates for `names` into `directory` where the devices run (a
        substation's fleet, say), from this intermediate alone: existing ones are kept. Serials
        are `leaf_serial`'s, so the central PKI's CRL revokes these too. Returns the serials of
        the certificates minted."""
        if not self.chain:
            raise PKIError("mint signs with an intermediate CA; the root's devices come from `fmb certs init`")
        for name in names:
            check_name(name)
        minted: dict[str, int] = {}
        for name in names:
            if (directory / f"{name}.pem").exists() and (directory / f"{name}.key").exists():
                continue
            serial = leaf_serial(self.cert, name, generation)
            key, cert = self.sign_leaf(name, "client", [], serial)
            self.write_leaf(directory, name, key, cert, sync=False)
            minted[name] = serial
        if minted:
            os.sync()  # one flush for the lot: an fsync per file is what bulk issuance costs
        return minted


def now() -> dt.datetime:
    """The current time, UTC."""
    return dt.datetime.now(dt.UTC)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str) -> None:
    """Refuse a certificate name that is not 1-64 safe characters (it becomes a file name)."""
    if not _NAME.fullmatch(name) or name == "ca":
        raise PKIError(
            f"certificate name {name!r} is not usable: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (and not 'ca')"
        )


def subject(common_name: str) -> x509.Name:
    """A subject with only a common name."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def general_names(hosts: list[str]) -> list[x509.GeneralName]:
    """Subject alternative names: IP addresses as such, the rest as DNS names, without duplicates."""
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):  # ordered, without duplicates
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def key_usage(**flags: bool) -> x509.KeyUsage:
    """A KeyUsage with the given flags set and every other one clear."""
    return x509.KeyUsage(**{field: flags.get(field, False) for field in _KEY_USAGES})


def aki(issuer_key: ec.EllipticCurvePrivateKey) -> x509.AuthorityKeyIdentifier:
    """The authority key id of what `issuer_key` signs (the issuer's own SKI)."""
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())


def sign(
    subject_name: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_name: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    validity: dt.timedelta,
    extensions: list[x509.ExtensionType],
    serial: int | None = None,
) -> x509.Certificate:
    """Sign a certificate (a random serial unless given) with SKI and AKI; constraints and usage
    critical."""
    start = now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_name)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + validity)
    )
    for extension in [*extensions, x509.SubjectKeyIdentifier.from_public_key(public_key)]:
        critical = isinstance(extension, x509.BasicConstraints | x509.KeyUsage)
        builder = builder.add_extension(extension, critical=critical)
    return builder.add_extension(aki(issuer_key), critical=False).sign(issuer_key, hashes.SHA256())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM (its file is 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_cert(path: Path) -> x509.Certificate:
    """The first certificate in a PEM file (the leaf, in a chain file)."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PKIError(f"cannot read certificate {path} ({exc}); run `fmb certs init`") from None


def write_file(path: Path, data: bytes, mode: int, sync: bool = True) -> None:
    """Write through a new temporary file that has `mode` from its creation, then rename it;
    fsync it first unless `sync` is false (the caller then syncs once for many files)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed a certificate's 0644
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
