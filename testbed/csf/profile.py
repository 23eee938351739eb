"""The MQTT cybersecurity framework profile of this testbed, backed by evidence.

Every function / category / subcategory of section 2 of *MQTT and the NIST Cybersecurity
Framework v1.0* is listed once (:data:`SUBCATEGORIES`), with what the testbed does about it: the
tests that prove it (their last outcome is read from ``var/evidence/test-results.json``, which
every test run writes), or why it is out of scope for a testbed, or why it is a gap. The
current profile is what the evidence shows now; the target profile is every technical
subcategory implemented and verified. CSF 2.0 identifiers stand next to the seed's names where
the mapping is clear.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.core.errors import TestbedError

__all__ = ["COMPOSE_EVIDENCE", "PROFILE_SCHEMA", "SUBCATEGORIES", "Subcategory", "build_profile", "render_markdown"]

PROFILE_SCHEMA = "fmb.profile/1"
IMPLEMENTED, OUT_OF_SCOPE, GAP = "implemented", "out of scope", "gap"


@dataclass(frozen=True)
class Subcategory:
    """One row of the seed's section 2 tables and the testbed's answer to it."""

    function: str
    category: str
    name: str
    status: str  # implemented, out of scope, gap
    how: str  # what the testbed does, or why not
    evidence: tuple[str, ...] = ()  # test node ids (prefixes) that prove it
    csf2: str = ""


def _s(function: str, category: str, name: str, status: str, how: str, evidence: tuple[str, ...] = (),
       csf2: str = "") -> Subcategory:
    return Subcategory(function, category, name, status, how, evidence, csf2)


T = "tests/"
SUBCATEGORIES: tuple[Subcategory, ...] = (
    # -- Identify -------------------------------------------------------------------------------
    _s("Identify", "Asset Management", "List of hardware devices", IMPLEMENTED,
       "`fmb inventory` lists brokers, devices, bridges and harness identities from the topology",
       (T + "test_inventory.py",), "ID.AM-01"),
    _s("Identify", "Asset Management", "Software inventory", IMPLEMENTED,
       "every result records Python, Mosquitto, paho-mqtt, gmqtt and OpenSSL versions",
       (T + "test_scenario.py::test_result_files_are_written",), "ID.AM-02"),
    _s("Identify", "Asset Management", "Network mapping", IMPLEMENTED,
       "inventory: endpoints, planes, sites, bridges; data-flow diagram",
       (T + "test_inventory.py",), "ID.AM-03"),
    _s("Identify", "Asset Management", "Lifecycle tracking", IMPLEMENTED,
       "inventory: every certificate's serial, expiry, days left and revocation",
       (T + "test_inventory.py",), "ID.AM-08"),
    _s("Identify", "Risk Management", "Defining Risk Tolerance", OUT_OF_SCOPE,
       "an organisational decision; the benchmarks give the figures it needs", (), "GV.RM-02"),
    _s("Identify", "Risk Management", "Risk Identification", OUT_OF_SCOPE,
       "organisational; the attack scenarios are a starting catalogue", (), "ID.RA-03"),
    _s("Identify", "Risk Management", "Risk Assessment", OUT_OF_SCOPE,
       "organisational; likelihood and impact are the operator's to judge", (), "ID.RA-04"),
    _s("Identify", "Risk Management", "Authentication of the Server by the Clients", IMPLEMENTED,
       "every client verifies the broker's certificate against the project CA and its hostname",
       (T + "test_security.py::test_valid_certificate_is_accepted",), "PR.AA-03"),
    _s("Identify", "Risk Management", "Analysis of Alternatives", IMPLEMENTED,
       "the prioritization benchmark compares segregated, shared and prioritised control planes",
       (T + "test_bench_prioritization.py",), "ID.RA-06"),
    _s("Identify", "Compliance", "Business Requirements", OUT_OF_SCOPE, "organisational", (), "GV.OC-01"),
    _s("Identify", "Compliance", "Legislative and Regulatory", OUT_OF_SCOPE,
       "organisational (e.g. NERC CIP for a utility)", (), "GV.OC-03"),
    _s("Identify", "Compliance", "Contractual Requirements", OUT_OF_SCOPE, "organisational", (), "GV.OC-03"),
    _s("Identify", "Compliance", "Technology Certification", OUT_OF_SCOPE,
       "certification of products is outside a testbed", ()),
    _s("Identify", "Information Sharing and Communications", "Understand Data Flows", IMPLEMENTED,
       "inventory data flows per profile, plane and site, derived from the topic tree; every message "
       "recorded with its trace context", (T + "test_inventory.py", T + "test_scenario.py"), "ID.AM-03"),
    _s("Identify", "Information Sharing and Communications", "Internal Communications", OUT_OF_SCOPE,
       "organisational", ()),
    _s("Identify", "Information Sharing and Communications", "External Communications", OUT_OF_SCOPE,
       "organisational", ()),
    _s("Identify", "Information Sharing and Communications",
       "Cryptographic suites versioning and implementation how-to", IMPLEMENTED,
       "TLS >= 1.2 on every listener and bridge; negotiated version and OpenSSL recorded in every result",
       (T + "test_security.py::test_generated_configs", T + "test_scenario.py::test_result_files"), "PR.DS-02"),
    _s("Identify", "Environmental Awareness", "Location of (client-side) end-devices", IMPLEMENTED,
       "each device belongs to a site in the topology and the inventory", (T + "test_inventory.py",), "ID.AM-01"),
    _s("Identify", "Environmental Awareness", "Location of end-to-end communication infrastructures",
       IMPLEMENTED, "bridges and which profiles cross them, in the inventory", (T + "test_inventory.py",),
       "ID.AM-03"),
    _s("Identify", "Environmental Awareness", "Location of (server-side) brokers and vicinity", IMPLEMENTED,
       "brokers by site and plane; field and data-centre networks in the Compose demo",
       (T + "test_inventory.py", T + "test_docker.py::test_a_field_device_cannot_reach"), "ID.AM-01"),
    # -- Protect --------------------------------------------------------------------------------
    _s("Protect", "Security Awareness", "User Awareness Training", OUT_OF_SCOPE, "organisational", (), "PR.AT-01"),
    _s("Protect", "Security Awareness", "Formal Training", OUT_OF_SCOPE, "organisational", (), "PR.AT-02"),
    _s("Protect", "Security Awareness", "Exercise and Evaluation", IMPLEMENTED,
       "the attack scenarios (scenarios/attack-*.toml, `fmb run`) are runnable exercises with expected detections",
       (T + "test_attack_scenarios.py", T + "test_signed_commands.py", T + "test_attacks.py"),
       "ID.IM-02"),
    _s("Protect", "Identity, Credential and Access Management", "Use of PKI (e.g. TLS, VPN)", IMPLEMENTED,
       "project CA, a certificate per broker, device, bridge and harness identity; mutual TLS everywhere",
       (T + "test_pki.py", T + "test_security.py"), "PR.AA-01"),
    _s("Protect", "Identity, Credential and Access Management", "Choose a well-known Certificate Authority",
       OUT_OF_SCOPE, "a closed OT bus is better served by a private CA it controls; the testbed makes one", ()),
    _s("Protect", "Identity, Credential and Access Management", "Authentication of Clients by the Server",
       IMPLEMENTED, "require_certificate, identity from the CN, no anonymous access, CRL checked; the tablet's "
       "web console serves nothing without its access token",
       (T + "test_security.py::test_tls_without", T + "test_security.py::test_certificate_from_another_ca",
        T + "test_security.py::test_revoked", T + "test_tablet_web.py::test_every_request_needs_the_token"),
       "PR.AA-03"),
    _s("Protect", "Identity, Credential and Access Management", "Authentication of the Server by the Clients",
       IMPLEMENTED, "clients check the broker certificate and hostname", (T + "test_security.py",), "PR.AA-03"),
    _s("Protect", "Identity, Credential and Access Management", "Authorization of Clients by the Server",
       IMPLEMENTED, "least-privilege ACLs generated from one topic tree; MQTT v5 reason codes on denial",
       (T + "test_acl.py", T + "test_topics_and_acl.py::test_acl_is_least_privilege"), "PR.AA-05"),
    _s("Protect", "Information Protection", "Use of cryptographic suites (e.g. TLS, VPN)", IMPLEMENTED,
       "TLS 1.2+ on every hop including bridges", (T + "test_security.py",), "PR.DS-02"),
    _s("Protect", "Information Protection", "Integrity of Application Messages and Control Packets",
       IMPLEMENTED, "TLS per hop; commands signed end to end (Ed25519) and checked by the actuator; every "
       "payload decoded within bounds (size, depth, strings, numbers) and every message handler contained, "
       "so a hostile message from an authenticated device is set aside as a dead letter, never fatal",
       (T + "test_signed_commands.py", T + "test_payload_fuzz.py", T + "test_bus_fuzz.py"), "PR.DS-02"),
    _s("Protect", "Information Protection", "Privacy of Application Messages and Control Packets",
       IMPLEMENTED, "TLS per hop; no plaintext listener (brokers, and the tablet's web console: HTTPS only)",
       (T + "test_security.py::test_plaintext", T + "test_tablet_web.py::test_plaintext_http_gets_no_page"),
       "PR.DS-02"),
    _s("Protect", "Information Protection", "Non-repudiation of message transmission", IMPLEMENTED,
       "commands carry the issuer's Ed25519 signature, recorded with the message",
       (T + "test_signed_commands.py::test_scenario_commands_are_signed",), "PR.DS-02"),
    _s("Protect", "Information Protection", "Secure Random Number Generation for all involved devices",
       IMPLEMENTED, "keys, serials and trace ids from the OS CSPRNG (cryptography, os.urandom)",
       (T + "test_pki.py",), "PR.DS-02"),
    _s("Protect", "Server-side Protection", "Compliance with MQTT specification", IMPLEMENTED,
       "Mosquitto 2.0 rejects malformed packets; MQTT v5 throughout, and the clients honour it: a PUBREC "
       "failure reason is a failed publish, never a delivered one, and a reconnect sends no more than the "
       "server's Receive Maximum",
       (T + "test_attacks.py::test_malformed_packets", T + "test_qos2.py"), "PR.PS-01"),
    _s("Protect", "Server-side Protection", "Automatic Client disconnect mechanisms", IMPLEMENTED,
       "keep-alive timeouts; `fmb respond revoke` evicts live sessions (dynsec disableClient after the CRL)",
       (T + "test_attacks.py::test_stolen_certificate",), "RS.MI-01"),
    _s("Protect", "Server-side Protection", "Suspicious behavior detection", IMPLEMENTED,
       "the monitor's alerts on the control plane, a burst of payloads the devices reject among them",
       (T + "test_attacks.py", T + "test_rejected_payloads.py"), "DE.AE-02"),
    _s("Protect", "Server-side Protection", "Dynamic Access Control Listing (e.g. IP address or Client ID)",
       IMPLEMENTED, "`fmb respond block` changes the live brokers' access control",
       (T + "test_attacks.py::test_block_topic_and_identity",), "PR.AA-05"),
    _s("Protect", "Server-side Protection", "Rate limiting and/or blocking (e.g. IP address)", IMPLEMENTED,
       "message_size_limit and max_queued_messages on every broker; blocking by identity or topic, automatic "
       "on a burst of rejected payloads; an identity's sessions per broker capped by the monitor (session_cap "
       "policy: 300 connections of one certificate -> 8 accepted, all dropped, the rest refused)",
       (T + "test_security.py::test_generated_configs", T + "test_attacks.py::test_block",
        T + "test_rejected_payloads.py", T + "test_connection_caps.py"), "PR.IR-01"),
    _s("Protect", "Server-side Protection", "Data-at-rest encryption", GAP,
       "the data-centre brokers' persistence file is plaintext on disk (keys are 0600); an encrypted "
       "volume is the deployment's job, not exercised here", (), "PR.DS-01"),
    _s("Protect", "Server-side Protection",
       "Frequent session renegotiation to establish new cryptographic parameters (e.g. replace session keys "
       "or change cipher suites)", IMPLEMENTED,
       "`fmb certs rotate` gives every identity new keys without stopping the bus (brokers reload on SIGHUP, "
       "devices restart one at a time); each new TLS connection negotiates fresh session keys",
       (T + "test_recover.py::test_rotation",), "PR.DS-02"),
    _s("Protect", "Client-side Protection", "Tamper proof end-devices", OUT_OF_SCOPE,
       "simulated devices have no hardware", ()),
    _s("Protect", "Client-side Protection", "Proper storage of the client certificate (key management considerations)",
       IMPLEMENTED, "private keys 0600 from creation, never in git; one key per identity",
       (T + "test_security.py::test_private_keys_are_owner_only", T + "test_pki.py"), "PR.AA-01"),
    _s("Protect", "Client-side Protection", "Two-factor authentication", OUT_OF_SCOPE,
       "machine-to-machine: the certificate is the factor; the command signature is a second, independent key",
       ()),
    # -- Detect ---------------------------------------------------------------------------------
    _s("Detect", "Network Monitoring", "Repeated connection attempts", IMPLEMENTED,
       "the monitor alerts on repeated connections / TLS handshake failures from one source",
       (T + "test_attacks.py::test_repeated_connection", T + "test_attacks.py::test_rogue_clients"), "DE.CM-01"),
    _s("Detect", "Network Monitoring", "Abnormal termination of connections", IMPLEMENTED,
       "the monitor alerts on socket errors and keep-alive timeouts",
       (T + "test_attacks.py::test_abnormal_termination",), "DE.CM-01"),
    _s("Detect", "Physical Monitoring", "Client availability verification", IMPLEMENTED,
       "the scenario runner's initial-state check, the monitor's silent-client alert, and every process's "
       "heartbeat (MQTT loop alive, connected within its backoff) in `fmb status` and the containers' health",
       (T + "test_scenario.py", T + "test_attacks.py::test_abnormal_termination_and_idle", T + "test_health.py"),
       "DE.CM-09"),
    _s("Detect", "Physical Monitoring", "End-devices and their vicinity physical inspection", OUT_OF_SCOPE,
       "physical", (), "DE.CM-02"),
    _s("Detect", "Intrusion Detection", "Repeated authentication attempts", IMPLEMENTED,
       "the monitor alerts on repeated certificate failures",
       (T + "test_attacks.py::test_rogue_clients", T + "test_attacks.py::test_stolen_certificate"), "DE.CM-01"),
    _s("Detect", "Intrusion Detection", "Topic scanning (attempts to send or subscribe to many topics)",
       IMPLEMENTED, "the monitor alerts on denials across many topics (subscribe scans on every broker, publish "
       "scans on the control plane, whose brokers log at debug level)",
       (T + "test_attacks.py::test_topic_scan", T + "test_attacks.py::test_publish_scan"), "DE.CM-01"),
    _s("Detect", "Intrusion Detection", "Sending undeliverable messages (no subscribers to the topics)",
       IMPLEMENTED, "the monitor alerts on topics no role reads", (T + "test_attacks.py::test_messages_nobody_reads",),
       "DE.AE-02"),
    _s("Detect", "Intrusion Detection", "Clients that connect but do not send data", IMPLEMENTED,
       "the monitor alerts on silent clients", (T + "test_attacks.py::test_abnormal_termination_and_idle",),
       "DE.CM-01"),
    # -- Respond --------------------------------------------------------------------------------
    _s("Respond", "Response Planning", "Revoke lost and/or compromised certificates", IMPLEMENTED,
       "`fmb certs revoke` / `fmb respond revoke`: CRL, broker reload, eviction",
       (T + "test_security.py::test_revoked", T + "test_attacks.py::test_stolen_certificate"), "RS.MI-01"),
    _s("Respond", "Response Planning", "Revoke lost and/or compromised Client or Server authentication credentials",
       IMPLEMENTED, "the same, for every identity (devices, bridges, harness, brokers)",
       (T + "test_pki.py", T + "test_attacks.py::test_topic_scan"), "RS.MI-01"),
    _s("Respond", "Response Planning", "Disconnect suspicious or compromised end-devices", IMPLEMENTED,
       "`fmb respond revoke` evicts live sessions", (T + "test_attacks.py::test_stolen_certificate",), "RS.MI-01"),
    _s("Respond", "Response Planning", "Block compromised telemetry channels", IMPLEMENTED,
       "`fmb respond block TOPIC`", (T + "test_attacks.py::test_block_topic_and_identity",), "RS.MI-01"),
    _s("Respond", "Response Planning", "Increase Firewall policies", GAP,
       "network-level blocking (nftables on the broker hosts) is not automated: a per-source connection "
       "limit needs NET_ADMIN in the broker's network namespace and, on the local bus, sees one source "
       "(loopback) for every client; the per-identity cap is the monitor's session_cap policy instead",
       (), "RS.MI-01"),
    _s("Respond", "Response Planning", "Shutdown compromised brokers and servers", IMPLEMENTED,
       "the fault API and `fmb down` stop a broker by its pid",
       (T + "test_docker.py::test_local_backend_faults", T + "test_recover.py"), "RS.MI-02"),
    # -- Recover --------------------------------------------------------------------------------
    _s("Recover", "Recover Planning",
       "Perform information system recovery (e.g. restart broker, create new telemetry channels, etc.)",
       IMPLEMENTED, "`fmb recover` restarts what is down or unhealthy from persisted state, then verifies "
       "with Appendix A",
       (T + "test_recover.py::test_recover",), "RC.RP-01"),
    _s("Recover", "Recover Planning", "Perform reconstitution activities", IMPLEMENTED,
       "`fmb restore` brings back PKI and broker persistence, verified", (T + "test_recover.py::test_backup",),
       "RC.RP-05"),
    _s("Recover", "Recover Planning", "Provide alternate work site to recover work activities", OUT_OF_SCOPE,
       "organisational", ()),
    _s("Recover", "Recover Planning", "Review Firewall policies", OUT_OF_SCOPE, "no firewall is managed", ()),
    _s("Recover", "Recover Planning", "Reissue certificates and authentication credentials", IMPLEMENTED,
       "`fmb certs reissue` after a revocation, verified", (T + "test_recover.py::test_reissue",), "RC.RP-01"),
    _s("Recover", "Recover Planning", "Inspect end-devices", OUT_OF_SCOPE, "physical", ()),
    _s("Recover", "Recover Planning", "Review Key Management and cryptographic deployments", IMPLEMENTED,
       "inventory of certificates with expiry and revocation", (T + "test_inventory.py",), "ID.AM-08"),
    _s("Recover", "Recover Planning", "Backup systems", IMPLEMENTED,
       "`fmb backup` (mode 0600) and a verified restore", (T + "test_recover.py::test_backup",), "PR.DS-11"),
    _s("Recover", "Recover Planning", "Updated contingency plan", OUT_OF_SCOPE, "organisational", (), "RC.RP-06"),
)


D = T + "test_docker_security.py::"
# The same subcategories proven on the Compose bus (containers, the monitor as a service, the CA in its
# volume): the profile names the evidence of both backends, each with its own last outcome.
COMPOSE_EVIDENCE: dict[str, tuple[str, ...]] = {
    "Suspicious behavior detection": (D + "test_attack_scenario_is_detected_on_compose",),
    "Authorization of Clients by the Server": (D + "test_a_stolen_device_credential_stays_inside_its_acl",),
    "Authentication of Clients by the Server": (D + "test_certs_revoke_reaches_every_broker",),
    "Revoke lost and/or compromised certificates": (D + "test_certs_revoke_reaches_every_broker",
                                                    D + "test_revoke_and_block_cut_an_identity_off"),
    "Disconnect suspicious or compromised end-devices": (D + "test_revoke_and_block_cut_an_identity_off",),
    "Dynamic Access Control Listing (e.g. IP address or Client ID)": (D + "test_revoke_and_block_cut_an_identity_off",),
    "Perform information system recovery (e.g. restart broker, create new telemetry channels, etc.)":
        (D + "test_recover_restarts_a_stopped_device",),
    "Client availability verification": (D + "test_the_monitor_holds_only_what_it_needs",),
}


def _outcome(evidence: tuple[str, ...], results: dict[str, dict[str, str]]) -> tuple[str, list[dict[str, str]]]:
    """(verified | failing | not run, the matching test results) for one subcategory."""
    found: list[dict[str, str]] = []
    for prefix in evidence:
        matches = {node: r for node, r in results.items() if node.startswith(prefix)}
        if not matches:
            return "not run", found
        found += [{"test": node, **r} for node, r in sorted(matches.items())]
    if any(r["outcome"] == "failed" for r in found):
        return "failing", found
    if all(r["outcome"] == "skipped" for r in found):
        return "not run", found
    return "verified", found


def build_profile(results_file: Path) -> dict[str, Any]:
    """The profile as a JSON-ready dict, from the last test outcomes in ``results_file``."""
    try:
        results = json.loads(results_file.read_text())["results"] if results_file.exists() else {}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TestbedError(f"{results_file} holds no test outcomes ({type(e).__name__}: {e}); delete it and run "
                           "scripts/test to write it again") from None
    rows = []
    for s in SUBCATEGORIES:
        row: dict[str, Any] = {"function": s.function, "category": s.category, "subcategory": s.name,
                               "csf2": s.csf2, "how": s.how, "target": IMPLEMENTED if s.status != OUT_OF_SCOPE
                               else OUT_OF_SCOPE}
        if s.status == IMPLEMENTED:
            verdict, found = _outcome(s.evidence, results)
            row["current"] = "implemented and verified" if verdict == "verified" else f"implemented, {verdict}"
            row["evidence"] = found or list(s.evidence)
            compose = COMPOSE_EVIDENCE.get(s.name)
            if compose:  # on the Compose bus too: its own verdict, beside the local one
                verdict, found = _outcome(compose, results)
                row["compose"] = {"current": verdict, "evidence": found or list(compose)}
        else:
            row["current"] = s.status
        rows.append(row)
    technical = [r for r in rows if r["target"] == IMPLEMENTED]
    verified = [r for r in technical if r["current"] == "implemented and verified"]
    share = len(verified) / len(technical)
    tier = (3 if share >= 0.9 else 2 if share >= 0.6 else 1)
    tier_names = {1: "Partial", 2: "Risk Informed", 3: "Repeatable"}
    return {
        "schema": PROFILE_SCHEMA, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": "MQTT and the NIST Cybersecurity Framework v1.0, section 2",
        "evidence_file": str(results_file), "subcategories": rows,
        "summary": {"total": len(rows), "technical": len(technical), "verified": len(verified),
                    "gaps": [r["subcategory"] for r in rows if r["current"] == GAP],
                    "out_of_scope": sum(r["current"] == OUT_OF_SCOPE for r in rows),
                    "not_verified": [r["subcategory"] for r in technical
                                     if r["current"] not in ("implemented and verified", GAP)]},
        "tier": {"level": tier, "name": tier_names[tier],
                 "why": f"{len(verified)} of {len(technical)} technical subcategories are implemented and verified "
                        "by regression tests that run on every change (Tier 3 needs at least 90 %); Tier 4 "
                        "(Adaptive) would need lessons learned fed back continuously, which a testbed cannot show"},
    }


def render_markdown(profile: dict[str, Any]) -> str:
    s, t = profile["summary"], profile["tier"]
    lines = [
        "# MQTT cybersecurity framework profile of the testbed", "",
        f"Source: {profile['source']}. Generated {profile['created']} from the test outcomes in "
        f"`{profile['evidence_file']}`.", "",
        f"**Implementation tier supported by the evidence: {t['level']} ({t['name']}).** {t['why']}.", "",
        f"{s['verified']} of {s['technical']} technical subcategories implemented and verified; "
        f"{len(s['gaps'])} gaps; {s['out_of_scope']} out of scope for a testbed.", "",
        "| function | category | subcategory | CSF 2.0 | current | target | how / why | evidence "
        "| on the Compose bus |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in profile["subcategories"]:
        ev = r.get("evidence") or []
        evidence = "<br>".join(f"`{e['test']}` {e['outcome']}" if isinstance(e, dict) else f"`{e}` not run"
                               for e in ev[:4]) + (f"<br>(+{len(ev) - 4} more)" if len(ev) > 4 else "")
        compose = r.get("compose")
        on_compose = "" if not compose else f"{compose['current']}: " + "<br>".join(
            f"`{e['test']}` {e['outcome']}" if isinstance(e, dict) else f"`{e}`" for e in compose["evidence"][:3])
        lines.append(f"| {r['function']} | {r['category']} | {r['subcategory']} | {r['csf2']} | {r['current']} | "
                     f"{r['target']} | {r['how']} | {evidence} | {on_compose} |")
    if s["not_verified"]:
        lines += ["", "Implemented but not verified by the last test run: " + "; ".join(s["not_verified"]) + "."]
    return "\n".join(lines) + "\n"
