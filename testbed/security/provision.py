"""Provisioning: every identity a topology needs, in one PKI directory, created where missing;
a substation's devices under that substation's intermediate CA."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from testbed.core.topology import Topology
from testbed.security.pki import PKI
from testbed.security.signing import SigningKeys

__all__ = ["ensure_pki", "issuers_for"]


def issuers_for(topology: Topology) -> dict[str, str]:
    """``{device id: "<site>-ca"}`` for every device of a fleet or of a template-generated
    substation (``[[substations]]``): a substation's meters and its other devices share that
    substation's intermediate CA, so it can mint them where they run. Devices declared one by one
    at other sites (Appendix A's) stay under the root, and so do bridges and the harness."""
    generated = {site for template in topology.templates for site in template.site_names()}
    return {d.id: f"{d.site}-ca" for d in topology.devices if d.fleet or d.site in generated}


def ensure_pki(topology: Topology, certs: Path, issuers: Mapping[str, str] | None = None) -> PKI:
    """The PKI in ``certs`` with every identity of ``topology`` (created where missing); clients
    named in ``issuers`` (default: `issuers_for(topology)`) under those intermediate CAs."""
    pki = PKI(certs)
    servers = {b.name: [b.host] for b in topology.brokers} | topology.web_servers()
    chosen = issuers_for(topology) if issuers is None else issuers
    created = pki.init(servers, topology.client_identities(), chosen)
    created += [f"signing key {n}" for n in SigningKeys(certs).ensure(topology.command_signers())]
    if created:
        shown = ", ".join(created[:8]) + (f" and {len(created) - 8} more" if len(created) > 8 else "")
        print(f"PKI in {certs}: created {shown}")
    return pki
