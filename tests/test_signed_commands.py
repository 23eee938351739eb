"""Protect: actuators execute only fresh commands signed by an authorised key.

The attacker here holds a valid broker credential with write access to the command topics
(the operator's), as a compromised broker or a stolen credential would: TLS and ACLs let the
command through, and only the end-to-end signature stops it.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from testbed.core.payloads import decode, encode
from testbed.reporting.text import summary_table
from testbed.security.signing import CommandRejected, CommandSigner, CommandVerifier, SigningKeys, load_trusted
from testbed.transport.mqtt import publish_properties, tls_context
from tests.conftest import wait_log

TOPIC = "fmb/supplymodule/SupplyControlProfile/supply-1"


def _publish(bus, payload: bytes, props: list[tuple[str, str]] | None) -> None:  # type: ignore[no-untyped-def]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"attacker-{time.monotonic_ns()}",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.tls_set_context(tls_context(bus.identity("operator")))
    client.connect(bus.endpoint("field-control").host, bus.endpoint("field-control").port)
    client.loop_start()
    try:
        info = client.publish(TOPIC, payload, qos=1, properties=publish_properties(None, props))
        info.wait_for_publish(5)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def _operator_signer(bus) -> CommandSigner:  # type: ignore[no-untyped-def]
    return CommandSigner("operator", SigningKeys(bus.pki.directory).key_path("operator"))


def _command(volts: float, source: str = "operator", ts_ns: int | None = None) -> bytes:
    return encode("SupplyControlProfile", source, int(time.time_ns() % 10**9), {"setpoint_v": volts}, ts_ns=ts_ns)


ATTACKS = {
    "unsigned": (lambda bus: (_command(91.0), None), "unsigned command"),
    "forged": (lambda bus: (p := _command(92.0), [
        ("signer", "operator"),
        ("sig", base64.b64encode(Ed25519PrivateKey.generate().sign(TOPIC.encode() + b"\n" + p)).decode())]),
        "bad signature claiming to be 'operator'"),
    "unknown signer": (lambda bus: (p := _command(93.0, "intruder"), [
        ("signer", "intruder"),
        ("sig", base64.b64encode(Ed25519PrivateKey.generate().sign(TOPIC.encode() + b"\n" + p)).decode())]),
        "signer 'intruder' is not authorised"),
    "stale": (lambda bus: (p := _command(94.0, ts_ns=time.time_ns() - 120 * 10**9),
                           _operator_signer(bus).properties(TOPIC, p)), "stale command"),
    "moved to another device": (lambda bus: (p := _command(95.0), _operator_signer(bus).properties(
        "fmb/supplymodule/SupplyControlProfile/supply-2", p)), "bad signature"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_command_is_rejected_and_not_executed(bus, attack: str) -> None:
    make, reason = ATTACKS[attack]
    log = bus.device_log("supply-1")
    start = len(log.read_text())
    payload, props = make(bus)
    _publish(bus, payload, props)
    text = wait_log(log, start, "rejected command")
    assert "rejected command on " + TOPIC in text and reason in text, text
    assert "set-point" not in text  # the supply did not act
    assert bus.alive("supply-1")


def test_replayed_command_is_rejected(bus, run_scenario) -> None:
    log = bus.device_log("supply-1")
    start = len(log.read_text())
    payload = _command(117.0)
    props = _operator_signer(bus).properties(TOPIC, payload)
    _publish(bus, payload, props)
    assert "set-point 117.0 V from operator" in wait_log(log, start, "set-point 117.0")
    _publish(bus, payload, props)  # the same bytes and signature, captured and sent again
    text = wait_log(log, start, "replayed command")
    assert "replayed command from 'operator'" in text
    assert text.count("set-point 117.0 V") == 1
    result = run_scenario(repeat=1)  # restores 120 V and runs Appendix A: legitimate commands work
    assert result["passed"], summary_table(result)


def test_scenario_commands_are_signed(run_scenario, tmp_path: Path) -> None:
    result = run_scenario(repeat=1, out=tmp_path)
    assert result["passed"], summary_table(result)
    commands = [json.loads(line) for line in (tmp_path / "messages.jsonl").read_text().splitlines()
                if "ControlProfile" in json.loads(line)["topic"]]
    assert commands
    assert all(c.get("signer") for c in commands), commands[0]


def test_verifier_unit() -> None:
    key = Ed25519PrivateKey.generate()
    pub = base64.b64encode(key.public_key().public_bytes(serialization.Encoding.Raw,
                                                         serialization.PublicFormat.Raw)).decode()
    verifier = CommandVerifier(load_trusted(f'{{"dms-1": "{pub}"}}'), max_age_s=5)
    payload = encode("CapBankControlProfile", "dms-1", 1, {"action": "close"})
    topic = "fmb/capbankmodule/CapBankControlProfile/capbank-1"
    props = {"signer": "dms-1", "sig": base64.b64encode(key.sign(topic.encode() + b"\n" + payload)).decode()}
    assert verifier.verify(topic, payload, props, decode(payload)) == "dms-1"
    with pytest.raises(CommandRejected, match="replayed"):
        verifier.verify(topic, payload, props, decode(payload))
    with pytest.raises(CommandRejected, match="bad signature"):
        verifier.verify(topic, payload + b" ", props, decode(payload))
    assert verifier.rejected == 2
