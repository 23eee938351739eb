"""Provisioning: every identity a topology needs, in one PKI directory, created where missing."""

from __future__ import annotations

from pathlib import Path

from testbed.core.topology import Topology
from testbed.security.pki import PKI
from testbed.security.signing import SigningKeys

__all__ = ["ensure_pki"]


def ensure_pki(topology: Topology, certs: Path) -> PKI:
    """The PKI in ``certs`` with every identity of ``topology`` (created where missing)."""
    pki = PKI(certs)
    servers = {b.name: [b.host] for b in topology.brokers} | topology.web_servers()
    created = pki.init(servers, topology.client_identities())
    created += [f"signing key {n}" for n in SigningKeys(certs).ensure(topology.command_signers())]
    if created:
        print(f"PKI in {certs}: created {', '.join(created)}")
    return pki
