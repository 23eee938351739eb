"""Topologies at scale (issue 12): ``[[substations]]`` templates, allocated ports, fleets, and
bridges that carry only their own substation's traffic, measured on real brokers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokers.mosquitto import render_conf
from testbed.bench.common import Processes, start_broker
from testbed.core.errors import ConfigError
from testbed.core.topics import topic
from testbed.core.topology import DEFAULT_TOPOLOGY, load_topology
from testbed.core.waiting import wait_until
from testbed.security.pki import PKI
from testbed.transport.mqtt import TLSIdentity, connect

TOPOLOGIES = DEFAULT_TOPOLOGY.parent
SMALL = TOPOLOGIES / "utility-small.toml"


def test_a_template_expands_into_substations_with_their_devices_feeders_and_fleets() -> None:
    t = load_topology(SMALL)
    assert [s.name for s in t.substations] == ["sub-001", "sub-002", "sub-003"]
    assert all(s.kind == "edge" and s.bridge_to == "dc" for s in t.substations)
    assert len(t.brokers) == 8 and len(t.bridges) == 6
    feeder = t.feeder("sub-002-f1")
    assert (feeder.supply, feeder.capbank, feeder.meter) == ("sub-002-f1-supply", "sub-002-f1-capbank",
                                                             "sub-002-f1-m0001")
    assert len(feeder.meters) == 50 and feeder.meter_period_s == 5.0
    assert list(t.fleets) == ["sub-001-fleet", "sub-002-fleet", "sub-003-fleet"]
    assert [d.id for d in t.fleets["sub-003-fleet"]] == list(t.feeder("sub-003-f1").meters)
    assert t.fleet_site("sub-003-fleet") == "sub-003"
    assert {d.role for d in t.devices_at("sub-001") if not d.fleet} == {"tablet", "supply", "capbank"}
    assert t.feeder_of("sub-001-f1-m0050") == t.feeder("sub-001-f1") and t.feeder_of("dms-1") is None
    assert t.identity_role("sub-003-f1-m0007") == "meter"
    # Ports from [ports] base, a pair per site, none twice.
    ports = [p for s in t.sites for p in (s.delivery_port, s.control_port)]
    assert ports == list(range(21000, 21008))


def test_appendix_a_is_unchanged() -> None:
    t = load_topology()
    assert not t.templates and not t.fleets
    assert [(s.name, s.delivery_port, s.control_port) for s in t.sites] == [("dc", 28883, 28884),
                                                                            ("field", 18883, 18884)]
    assert t.feeder("feeder-1").meters == ("meter-1",)


def test_the_full_utility_has_ten_thousand_meters_each_its_own_identity() -> None:
    t = load_topology(TOPOLOGIES / "utility.toml")
    meters = [d for d in t.devices if d.role == "meter"]
    assert len(meters) == 10_000 and len({d.id for d in meters}) == 10_000
    assert len(t.fleets) == 10 and all(len(m) == 1000 for m in t.fleets.values())
    assert set(t.client_identities()) >= {d.id for d in meters}


def _sub(text: str, **fields: object) -> str:
    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') if not isinstance(v, bool) else f"{k} = {str(v).lower()}\n"
                    for k, v in fields.items())
    return text + "\n[[substations]]\n" + lines


BASE = SMALL.read_text().split("[[substations]]")[0]


@pytest.mark.parametrize(("text", "field", "fix"), [
    (_sub(BASE, name="sub", count=0, bridge_to="dc"), "substations[0].count", "use 1 to 1,000"),
    (_sub(BASE, name="sub", count=2, bridge_to="dc", meters_per_feeder=10**6), "substations[0].meters_per_feeder",
     "use 1 to 100,000"),
    (_sub(BASE, name="sub", count=2, bridge_to="nowhere"), "substations.bridge_to", "name another site"),
    (_sub(BASE, name="sub", count=2), "substations[0].bridge_to", "data-centre site"),
    (_sub(BASE, name="sub", count=2, bridge_to="dc", colour="red"), "substations[0].colour", "remove it"),
    (_sub(BASE, name="s b", count=2, bridge_to="dc"), "substations[0].name", "letters, digits"),
    (_sub(BASE, name="sub", count=2, bridge_to="dc", line_drop_v=-1), "substations[0].line_drop_v", ">= 0"),
    (_sub(BASE, name="sub", count=2, bridge_to="dc", persistence="snapshot"), "substations[0].persistence",
     "kind = 'datacentre'"),
    (_sub(BASE.replace('id = "dms-1"', 'id = "sub-001-tablet"'), name="sub", count=2, bridge_to="dc"),
     "devices", "unique"),
    (_sub(BASE + '\n[[sites]]\nname = "sub-002"\nkind = "edge"\n', name="sub", count=2, bridge_to="dc"),
     "sites", "unique"),
    (_sub(BASE.replace("base = 21000", "base = 80"), name="sub", count=2, bridge_to="dc"), "ports.base", "1024"),
])
def test_template_mistakes_name_the_field_and_the_fix(tmp_path: Path, text: str, field: str, fix: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_topology(path)
    assert e.value.field == field, str(e.value)
    assert fix in e.value.fix, str(e.value)
    assert "\n" not in str(e.value)


APPENDIX = DEFAULT_TOPOLOGY.read_text()


@pytest.mark.parametrize(("text", "field", "fix"), [
    (APPENDIX.replace('meter = "meter-1"', 'meters = []'), "feeders[0].meters", "at least one"),
    (APPENDIX.replace('meter = "meter-1"', 'meter = "meter-1"\nmeters = ["meter-1"]'), "feeders[0].meters",
     "one of the two"),
    (APPENDIX.replace('meter = "meter-1"', 'meters = ["meter-1", "tablet-1"]'), "feeders[0].meters[1]",
     "use one of: meter-1"),
    (APPENDIX.replace('meter = "meter-1"', ''), "feeders[0].meters", "one of the two"),
])
def test_feeder_meter_lists_are_checked(tmp_path: Path, text: str, field: str, fix: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_topology(path)
    assert (e.value.field, fix in e.value.fix) == (field, True), str(e.value)


def test_a_feeder_may_list_several_meters_the_first_regulates(tmp_path: Path) -> None:
    text = APPENDIX.replace('meter = "meter-1"', 'meters = ["meter-1", "meter-2"]') + (
        '\n[[devices]]\nid = "meter-2"\nrole = "meter"\nsite = "field"\n')
    path = tmp_path / "two.toml"
    path.write_text(text)
    f = load_topology(path).feeder("feeder-1")
    assert (f.meters, f.meter) == (("meter-1", "meter-2"), "meter-1")


def test_each_substations_inward_bridge_names_only_its_own_devices() -> None:
    t = load_topology(SMALL)
    dc_control = render_conf(t, t.broker("dc-control"), _files())
    for n in ("001", "002", "003"):
        section = dc_control.split(f"connection bridge-sub-{n}-control-in")[1].split("connection ")[0]
        topics = [ln.split()[1] for ln in section.splitlines() if ln.startswith("topic ")]
        assert sorted(topics) == sorted([
            topic("fmb", "SupplyControlProfile", f"sub-{n}-f1-supply"),
            topic("fmb", "CapBankControlProfile", f"sub-{n}-f1-capbank"),
        ])


def _files():  # type: ignore[no-untyped-def]
    from pathlib import PurePath

    from brokers.mosquitto import BrokerFiles
    return BrokerFiles(certs=PurePath("/certs"), directory=PurePath("/b"), log=None)


@pytest.fixture
def utility_brokers(tmp_path: Path) -> Iterator[tuple]:  # type: ignore[type-arg]
    """Every broker of utility-small, real Mosquitto with the project's TLS, bridges up."""
    t = load_topology(SMALL).with_free_ports()
    pki = PKI(tmp_path / "certs")
    pki.init({b.name: [b.host] for b in t.brokers}, [b.name for b in t.bridges] + ["operator", "recorder"])
    procs = Processes(tmp_path)
    try:
        for site in sorted(t.sites, key=lambda s: s.bridge_to is not None):  # the data centre first
            for b in (b for b in t.brokers if b.site == site.name):
                start_broker(procs, t, b, pki, tmp_path / b.name)
        for b in t.bridges:  # each inward connection is logged by the field broker it reaches
            log = tmp_path / b.local / "mosquitto.log"
            wait_until(lambda log=log, b=b: f" as {b.name}-in " in log.read_text(), 15, interval_s=0.05,
                       what=f"bridge {b.name}-in not connected (see {log})")
        yield t, pki
    finally:
        procs.stop()


def test_a_command_for_one_substation_never_reaches_another(utility_brokers: tuple) -> None:  # type: ignore[type-arg]
    t, pki = utility_brokers
    ident = {n: TLSIdentity(pki.ca_cert, pki.client(n).cert, pki.client(n).key) for n in ("operator", "recorder")}
    seen: dict[str, list[str]] = {s.name: [] for s in t.substations}
    subscribed = threading.Barrier(len(seen) + 1, timeout=15)
    clients = []
    for site in seen:
        broker = t.broker_for(site, "control")

        def on_message(c, userdata, msg, site=site):  # type: ignore[no-untyped-def]
            seen[site].append(msg.topic)

        def on_connect(c, site=site):  # type: ignore[no-untyped-def]
            c.subscribe([(topic("fmb", p, "+"), 1) for p in ("SupplyControlProfile", "CapBankControlProfile")])
            c.on_subscribe = lambda *a: subscribed.wait()

        from testbed.transport.mqtt import Endpoint
        clients.append(connect(f"recorder-{site}", ident["recorder"], Endpoint(broker.host, broker.port),
                               on_message=on_message, on_connect=on_connect))
    subscribed.wait()
    dc = t.broker("dc-control")
    from testbed.transport.mqtt import Endpoint
    operator = connect("operator-scope", ident["operator"], Endpoint(dc.host, dc.port))
    try:
        for target in ("sub-002-f1-capbank", "sub-999-f1-capbank"):  # one addressed, one to nobody
            operator.publish(topic("fmb", "CapBankControlProfile", target), b"{}", qos=1).wait_for_publish(5)
        operator.publish(topic("fmb", "SupplyControlProfile", "sub-003-f1-supply"), b"{}", qos=1).wait_for_publish(5)
        wait_until(lambda: len(seen["sub-002"]) >= 1 and len(seen["sub-003"]) >= 1, 10, interval_s=0.02,
                   what=f"commands not delivered to their substations: {seen}")
        # A command published after the others is a barrier: once it arrived, the earlier ones had their chance.
        operator.publish(topic("fmb", "CapBankControlProfile", "sub-001-f1-capbank"), b"{}", qos=1).wait_for_publish(5)
        wait_until(lambda: len(seen["sub-001"]) >= 1, 10, interval_s=0.02, what=f"sub-001 got nothing: {seen}")
        assert seen == {
            "sub-001": [topic("fmb", "CapBankControlProfile", "sub-001-f1-capbank")],
            "sub-002": [topic("fmb", "CapBankControlProfile", "sub-002-f1-capbank")],
            "sub-003": [topic("fmb", "SupplyControlProfile", "sub-003-f1-supply")],
        }
    finally:
        for c in [*clients, operator]:
            c.disconnect()
            c.loop_stop()
