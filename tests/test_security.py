"""Protect: every broker refuses what it must, on the real listeners of the running bus."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testbed.core.waiting import wait_until
from testbed.security.pki import PKI
from tests.probes import client_context, try_mqtt


def _tls_refusal(outcome: str, *alerts: str) -> bool:
    """The broker refused during or right after the handshake: the expected TLS alert, or (when
    the alert loses the race with the socket's close) an abrupt end of the connection."""
    return any(a in outcome for a in alerts) or any(
        s in outcome for s in ("EOF occurred", "Connection reset", "closed without reply", "Broken pipe"))


def _ports(bus) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    return [(b.name, b.port) for b in bus.topology.brokers]


def test_valid_certificate_is_accepted(bus, pki: PKI) -> None:
    """The control case: without it, every refusal below could be a broken probe."""
    recorder = pki.client("recorder")
    ctx = client_context(pki.ca_cert, recorder.cert, recorder.key)
    for name, port in _ports(bus):
        assert try_mqtt(port, ctx, "probe-valid") == "connack", name


def test_plaintext_connection_is_refused(bus) -> None:
    for name, port in _ports(bus):
        outcome = try_mqtt(port, None, "probe-plain")
        assert outcome.startswith(("closed", "connection error")), f"{name}: {outcome}"


def test_tls_without_client_certificate_is_refused(bus, pki: PKI) -> None:
    ctx = client_context(pki.ca_cert)
    for name, port in _ports(bus):
        outcome = try_mqtt(port, ctx, "probe-nocert")
        assert _tls_refusal(outcome, "CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE"), f"{name}: {outcome}"


def test_certificate_from_another_ca_is_refused(bus, tmp_path: Path) -> None:
    rogue = PKI(tmp_path / "rogue")
    rogue.init({}, ["recorder"])  # same CN as a real identity, wrong CA
    paths = rogue.client("recorder")
    # Trust the real CA for the server, present the rogue client certificate.
    ctx = client_context(bus.pki.ca_cert, paths.cert, paths.key)
    for name, port in _ports(bus):
        outcome = try_mqtt(port, ctx, "probe-rogue")
        assert _tls_refusal(outcome, "UNKNOWN_CA"), f"{name}: {outcome}"


def test_revoked_certificate_is_refused_after_fmb_certs_revoke(bus, pki: PKI) -> None:
    spare = pki.issue_client("spare-1")
    ctx = client_context(pki.ca_cert, spare.cert, spare.key)
    port = bus.topology.broker("field-delivery").port
    assert try_mqtt(port, ctx, "probe-spare") == "connack"

    cli = subprocess.run(
        [sys.executable, "-m", "testbed", "certs", "revoke", "spare-1",
         "--certs", str(pki.directory), "--state", str(bus.state_dir)],
        capture_output=True, text=True, timeout=30,
    )
    assert cli.returncode == 0, cli.stderr
    assert "reloaded 4 running brokers" in cli.stdout

    outcomes: dict[str, str] = {}

    def refused_everywhere() -> bool:
        outcomes.update({name: try_mqtt(p, ctx, "probe-spare") for name, p in _ports(bus)})
        return all(_tls_refusal(o, "REVOKED") for o in outcomes.values())

    wait_until(refused_everywhere, 10, interval_s=0.2, what=lambda: f"spare-1 not refused as revoked: {outcomes}")
    # The legitimate identities are unaffected by the CRL reload.
    recorder = pki.client("recorder")
    assert try_mqtt(port, client_context(pki.ca_cert, recorder.cert, recorder.key)) == "connack"


def test_generated_configs_have_no_plaintext_listener_nor_anonymous_access(bus) -> None:
    for broker in bus.topology.brokers:
        conf = (bus.state_dir / "brokers" / broker.name / "mosquitto.conf").read_text()
        listeners = [ln for ln in conf.splitlines() if ln.startswith("listener ")]
        assert len(listeners) == 1, listeners
        for required in ("allow_anonymous false", "require_certificate true",
                         "use_identity_as_username true", "crlfile ", "set_tcp_nodelay true",
                         "message_size_limit "):
            assert required in conf, (broker.name, required)
        assert "bridge_insecure true" not in conf


def test_private_keys_are_owner_only(pki: PKI) -> None:
    keys = list(pki.directory.rglob("*.key"))
    assert len(keys) >= 10
    for key in keys:
        assert key.stat().st_mode & 0o077 == 0, f"{key} is readable by others"


@pytest.mark.parametrize("plane", ["delivery", "control"])
def test_bridges_are_connected_with_their_own_identity(bus, plane: str) -> None:
    logs = (bus.log_dir / f"dc-{plane}.log").read_text() + (bus.log_dir / f"field-{plane}.log").read_text()
    assert f"u'bridge-field-{plane}'" in logs
