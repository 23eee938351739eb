"""End-to-end signed control commands (NIST CSF Protect): Ed25519 over the topic and payload.

TLS protects each hop; it does not stop a compromised broker, or anyone holding a broker
credential with write access to a command topic, from closing a cap bank. So every command
is signed by its issuer's own Ed25519 key (the tablet, the DMS, the harness's operator), and an
actuator executes a command only if:

* it carries user properties ``signer`` and ``sig`` (base64 Ed25519 signature of
  ``topic + "\\n" + payload``, so a signature cannot be moved to another device's topic);
* ``signer`` is on the actuator's list of authorised keys and is the payload's ``source``;
* the payload's timestamp is fresh (within ``max_age_s`` of now, either way);
* that exact signature has not been seen within the freshness window (no replay).

Keys live beside the PKI in ``<certs>/signing/<name>.key`` (PKCS#8 PEM, mode 0600) and
``<name>.pub`` (raw public key, base64). Public keys are not secret: devices get their list of
authorised signers in ``FMB_TRUSTED_SIGNERS`` (JSON ``{name: base64 public key}``).
"""

from __future__ import annotations

import base64
import json
import time
from collections import OrderedDict
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from testbed.core.errors import CommandRejected
from testbed.core.payloads import Message
from testbed.security.pki import write_atomic

__all__ = ["CommandRejected", "CommandSigner", "CommandVerifier", "SigningKeys", "load_trusted"]

MAX_AGE_S = 30.0


class SigningKeys:
    """The Ed25519 signing keys of the command issuers, in ``<certs>/signing``."""

    def __init__(self, certs: Path) -> None:
        self.directory = certs / "signing"

    def key_path(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    def ensure(self, names: list[str]) -> list[str]:
        """Create the missing keys; returns the names created."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        created = []
        for name in names:
            if self.key_path(name).exists():
                continue
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            write_atomic(self.key_path(name), pem, 0o600)
            write_atomic(self.directory / f"{name}.pub", _public_b64(key.public_key()).encode(), 0o644)
            created.append(name)
        return created

    def public(self, name: str) -> str:
        """The base64 raw public key of ``name``."""
        return (self.directory / f"{name}.pub").read_text().strip()

    def trusted(self, names: list[str]) -> dict[str, str]:
        return {n: self.public(n) for n in names if (self.directory / f"{n}.pub").exists()}


def _public_b64(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_trusted(text: str) -> dict[str, Ed25519PublicKey]:
    """Parse ``FMB_TRUSTED_SIGNERS``; ValueError saying what is wrong."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("FMB_TRUSTED_SIGNERS must be a JSON object {name: base64 public key}")
    return {name: Ed25519PublicKey.from_public_bytes(base64.b64decode(b64)) for name, b64 in data.items()}


class CommandSigner:
    """Signs the commands of one issuer."""

    def __init__(self, name: str, key_file: Path) -> None:
        self.name = name
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{key_file} is not an Ed25519 private key")
        self.key = key

    def properties(self, topic: str, payload: bytes) -> list[tuple[str, str]]:
        """The user properties that carry the signature."""
        sig = self.key.sign(topic.encode() + b"\n" + payload)
        return [("signer", self.name), ("sig", base64.b64encode(sig).decode())]


class CommandVerifier:
    """Checks commands for one actuator: authorised signer, valid signature, fresh, not replayed."""

    def __init__(self, trusted: dict[str, Ed25519PublicKey], max_age_s: float = MAX_AGE_S) -> None:
        self.trusted = trusted
        self.max_age_s = max_age_s
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # signature -> when seen
        self.rejected = 0

    def verify(self, topic: str, payload: bytes | bytearray, props: dict[str, str], message: Message) -> str:
        """The signer's name, or CommandRejected (counted) with the reason."""
        try:
            return self._verify(topic, payload, props, message)
        except CommandRejected:
            self.rejected += 1
            raise

    def _verify(self, topic: str, payload: bytes | bytearray, props: dict[str, str], message: Message) -> str:
        signer, sig_b64 = props.get("signer"), props.get("sig")
        if not signer or not sig_b64:
            raise CommandRejected("unsigned command")
        key = self.trusted.get(signer)
        if key is None:
            raise CommandRejected(f"signer {signer!r} is not authorised here")
        try:
            sig = base64.b64decode(sig_b64, validate=True)
            key.verify(sig, topic.encode() + b"\n" + payload)
        except (InvalidSignature, ValueError):
            raise CommandRejected(f"bad signature claiming to be {signer!r}") from None
        if message.source != signer:
            raise CommandRejected(f"signed by {signer!r} but sent as {message.source!r}")
        now = time.time()
        age = now - message.ts_ns / 1e9
        if abs(age) > self.max_age_s:
            raise CommandRejected(f"stale command: {age:.1f} s old (limit {self.max_age_s:g} s)")
        while self._seen and next(iter(self._seen.values())) < now - 2 * self.max_age_s:
            self._seen.popitem(last=False)
        if sig in self._seen:
            raise CommandRejected(f"replayed command from {signer!r} (seq {message.seq})")
        self._seen[sig] = now
        return signer
