"""Identify: the inventory lists what runs, derived from what configures it."""

from __future__ import annotations

from pathlib import Path

from testbed.core.topology import load_topology
from testbed.csf.inventory import build_inventory, plot_data_flows
from testbed.security.pki import PKI


def test_inventory_lists_assets_rights_flows_and_certificates(tmp_path: Path) -> None:
    topology = load_topology()
    pki = PKI(tmp_path / "certs")
    pki.init({b.name: [] for b in topology.brokers}, topology.client_identities())
    pki.revoke("meter-1")
    inv = build_inventory(topology, pki)
    assert {b["name"] for b in inv["brokers"]} == {b.name for b in topology.brokers}
    assert all(not b["listener"]["plaintext"] and not b["listener"]["anonymous"] for b in inv["brokers"])
    meter = next(d for d in inv["devices"] if d["id"] == "meter-1")
    assert meter["rights"] == [{"access": "publish", "topic": "fmb/metermodule/MeterReadingProfile/meter-1",
                                "profile": "MeterReadingProfile", "plane": "delivery", "brokers": "field-delivery"}]
    flows = {(f["from"], f["to"], f["profile"]) for f in inv["data_flows"]}
    assert ("meter-1", "dms-1", "MeterReadingProfile") in flows
    assert ("dms-1", "capbank-1", "CapBankControlProfile") in flows
    assert all(f["crosses_bridge"] == (f["from"] == "dms-1" or f["to"] == "dms-1") for f in inv["data_flows"])
    certs = {c["name"]: c for c in inv["certificates"]}
    assert certs["meter-1"]["revoked"] and not certs["dms-1"]["revoked"]
    assert certs["dms-1"]["expires_in_days"] > 300
    png = plot_data_flows(inv, tmp_path / "flows.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
