"""QoS 2 across reconnects, paho against Mosquitto 2.0 (issue 11): stock paho loses messages and
reports them delivered; the project's client (``testbed.transport.reliable``) loses none.

Each test runs a real data-centre broker of its own (Debian's Mosquitto, the project's mutual TLS,
persistence on), restarted gracefully where it says so: SIGTERM, then the same configuration on
the same port. A consumer with a persistent session records what arrives; a message is *lost*
when ``on_publish`` reported it delivered and the consumer never got it. Stock paho is
``paho.Client`` configured as ``connect`` always configured it (clean start, no session expiry)
unless a test says otherwise. The last two need no broker: they pin the paho internals that
``ReliableClient`` overrides, and keep every MQTT client in ``testbed/transport/``.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from packaging.specifiers import SpecifierSet
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion, MessageState, MQTTErrorCode

from devices.base import Device, DeviceConfig
from testbed.backends import processes
from testbed.bench.common import Processes, bench_topology, start_broker
from testbed.core.ports import free_port
from testbed.core.topics import topic
from testbed.security.pki import PKI
from testbed.transport.mqtt import TLSIdentity, connect
from testbed.transport.reliable import ReliableClient
from tests.conftest import require

ROOT = "fmb"
TOPIC = topic(ROOT, "BenchFloodProfile", "qos2")
DENIED = topic(ROOT, "MeterReadingProfile", "meter-1")  # not the bench identity's to write
QUOTA_EXCEEDED, NOT_AUTHORIZED = 0x97, 0x87
MOSQUITTO_RECEIVE_MAXIMUM = 20  # Mosquitto's max_inflight_messages default; the testbed leaves it


def _wait(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> tuple[PKI, TLSIdentity]:
    require(shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists(),
            "Mosquitto is not installed: sudo apt-get install mosquitto")
    pki = PKI(tmp_path_factory.mktemp("qos2-certs"))
    pki.init({b.name: [] for b in bench_topology(ROOT, 2, (1, 2)).brokers}, ["bench"])
    return pki, TLSIdentity(pki.ca_cert, pki.client("bench").cert, pki.client("bench").key)


class Broker:
    """A persistent (data-centre) Mosquitto broker of a bench topology, started and stopped by pid."""

    def __init__(self, pki: PKI, work: Path) -> None:
        self.pki, self.directory = pki, work / "broker"
        self.procs = Processes(work)
        self.topology = bench_topology(ROOT, 2, (free_port(), free_port()), kind="datacentre")
        self.spec = self.topology.broker("bench-delivery")
        self.proc, self.endpoint = start_broker(self.procs, self.topology, self.spec, pki, self.directory)

    def stop_gracefully(self, *, frozen: bool = False) -> None:
        """SIGTERM (Mosquitto saves its database on the way out); ``frozen``: it was SIGSTOPped
        (the process helper sends SIGCONT before SIGTERM anyway)."""
        killed = self.procs.stop([self.proc], timeout_s=10)
        assert not killed, "the broker did not exit within 10 s of SIGTERM: not a graceful restart"

    def start(self) -> None:
        self.proc, _ = start_broker(self.procs, self.topology, self.spec, self.pki, self.directory)


@pytest.fixture
def broker(identity: tuple[PKI, TLSIdentity], tmp_path: Path) -> Iterator[Broker]:
    b = Broker(identity[0], tmp_path)
    yield b
    b.procs.stop()


class Observed:
    """Mixed into a client class: records every PUBREC's reason code and whether each CONNACK
    found a session, changing nothing else but for ``hold_pubrel``."""

    pubrecs: list[tuple[int, int]]
    sessions: list[bool]
    hold_pubrel = False  # fault injection: the connection drops between PUBREC and PUBREL

    def _handle_connack(self) -> MQTTErrorCode:
        c: Any = self
        self.sessions.append(bool(_packet.decode_connack(c._in_packet["command"], c._in_packet["packet"],
                                                         c._protocol).flags & 0x01))
        return super()._handle_connack()  # type: ignore[misc, no-any-return]

    def _handle_pubrec(self) -> MQTTErrorCode:
        c: Any = self
        p = _packet.decode_pubrec(c._in_packet["command"], c._in_packet["packet"], c._protocol)
        self.pubrecs.append((p.mid, p.reason.value))
        return super()._handle_pubrec()  # type: ignore[misc, no-any-return]

    def _send_pubrel(self, mid: int) -> MQTTErrorCode:
        if self.hold_pubrel:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._send_pubrel(mid)  # type: ignore[misc, no-any-return]


class ObservedPaho(Observed, paho.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.pubrecs, self.sessions = [], []
        super().__init__(*args, **kwargs)


class ObservedReliable(Observed, ReliableClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.pubrecs, self.sessions = [], []
        super().__init__(*args, **kwargs)


@dataclass
class Outcome:
    published: int
    delivered: set[int]  # sequence numbers on_publish reported as delivered
    failed: dict[int, int]  # sequence number -> reason code on_publish reported
    received: list[int]  # what the consumer got, in order, duplicates included
    refused: dict[int, int] = field(default_factory=dict)  # sequence number -> reason code of a refusing PUBREC
    pubrecs: int = 0  # PUBRECs the publisher received
    sessions: list[bool] = field(default_factory=list)  # each CONNACK: did the broker have the session?

    @property
    def lost(self) -> set[int]:
        return self.delivered - set(self.received)

    @property
    def duplicated(self) -> int:
        return len(self.received) - len(set(self.received))


class Run:
    """A consumer with a persistent session and one QoS 2 publisher of ``client_class``."""

    def __init__(self, broker: Broker, ident: TLSIdentity, name: str, client_class: type[paho.Client],
                 **options: Any) -> None:
        self.received: list[int] = []
        subscribed = threading.Event()

        def subscribe(c: paho.Client) -> None:
            c.on_subscribe = lambda *_: subscribed.set()
            c.subscribe(TOPIC, 2)

        self.consumer = connect(f"{name}-consumer", ident, broker.endpoint,
                                on_message=lambda c, u, m: self.received.append(int(m.payload)),
                                on_connect=subscribe, clean_start=False, session_expiry_s=600)
        assert subscribed.wait(5), "the consumer never subscribed"
        self.outcomes: dict[int, int] = {}  # mid -> reason code of the completing acknowledgement
        self.seq_of: dict[int, int] = {}  # mid -> sequence number
        self.lock = threading.Lock()

        def on_publish(c: paho.Client, u: Any, mid: int, reason: Any, props: Any) -> None:
            with self.lock:
                self.outcomes[mid] = reason.value

        self.client: Any = connect(f"{name}-producer", ident, broker.endpoint, client_class=client_class,
                                   **options)
        self.client.on_publish = on_publish
        self.infos: list[paho.MQTTMessageInfo] = []

    def publish(self, count: int, topic_name: str = TOPIC) -> None:
        for _ in range(count):
            seq = len(self.infos)
            info = self.client.publish(topic_name, str(seq).encode(), 2)
            assert info.rc == paho.MQTT_ERR_SUCCESS, paho.error_string(info.rc)
            self.seq_of[info.mid] = seq
            self.infos.append(info)

    def outcome(self, timeout_s: float = 15) -> Outcome:
        """Once every publish is settled (or ``timeout_s``), and what was delivered has arrived."""
        _wait(lambda: len(self.outcomes) >= len(self.infos), timeout_s)
        with self.lock:
            outcomes = {self.seq_of[mid]: code for mid, code in self.outcomes.items()}
        delivered = {s for s, code in outcomes.items() if code < 0x80}
        seen = [-1, time.monotonic()]

        def arrived() -> bool:  # all of it, or nothing new for half a second (stock paho's losses)
            if len(self.received) != seen[0]:
                seen[:] = [len(self.received), time.monotonic()]
            return delivered <= set(self.received) or time.monotonic() - seen[1] > 0.5

        _wait(arrived, 5)
        refused = {self.seq_of[mid]: code for mid, code in self.client.pubrecs if code >= 0x80}
        return Outcome(len(self.infos), delivered, {s: c for s, c in outcomes.items() if c >= 0x80},
                       list(self.received), refused, len(self.client.pubrecs), list(self.client.sessions))

    def close(self) -> None:
        for c in (self.client, self.consumer):
            c.disconnect()
            c.loop_stop()


def _burst_across_a_restart(broker: Broker, ident: TLSIdentity, name: str, client_class: type[paho.Client],
                            count: int, **options: Any) -> Outcome:
    """Publish ``count`` QoS 2 messages to a frozen broker (20 in flight, the rest queued in the
    client), restart it gracefully, and see what becomes of them."""
    run = Run(broker, ident, name, client_class, **options)
    try:
        processes.send(broker.proc, signal.SIGSTOP)  # nothing acknowledged: in flight and queued at the fault
        run.publish(count)
        broker.stop_gracefully(frozen=True)
        broker.start()
        return run.outcome()
    finally:
        run.close()


# -- across a graceful broker restart --------------------------------------------------------------


def test_stock_paho_loses_qos2_messages_across_a_graceful_restart(broker: Broker, identity: Any) -> None:
    """The mechanism of issue 11, on this machine: paho flushes all 200 on reconnect, Mosquitto
    refuses past its Receive Maximum with PUBREC 0x97, paho sends PUBREL anyway and the PUBCOMP
    makes on_publish report the refused message delivered."""
    out = _burst_across_a_restart(broker, identity[1], "stock", ObservedPaho, 200)
    assert not out.failed and len(out.delivered) == 200, "stock paho reports every message delivered"
    assert out.refused, "Mosquitto refused none of the flush: the mechanism did not reproduce"
    assert set(out.refused.values()) == {QUOTA_EXCEEDED}
    assert set(out.refused) <= out.delivered  # refused, yet reported delivered
    assert out.lost and out.lost == set(out.refused), f"lost {sorted(out.lost)}"


def test_the_project_client_loses_no_qos2_message_across_a_graceful_restart(broker: Broker, identity: Any) -> None:
    out = _burst_across_a_restart(broker, identity[1], "fixed", ObservedReliable, 200, exactly_once=True)
    assert not out.refused, "the flush went past the server's Receive Maximum"
    assert not out.failed and len(out.delivered) == 200
    assert not out.lost
    assert sorted(set(out.received)) == list(range(200)) and out.duplicated == 0


# -- each mechanism on its own, no restart needed ------------------------------------------------------


class StockUncapped(ObservedPaho):
    """Stock paho allowed 200 messages in flight, as its reconnect flush sends them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_inflight_messages = 200


class Uncapped(ObservedReliable):
    """The project's client with the Receive Maximum cap lifted: a broker whose quota disagrees."""

    def _limit(self) -> int:
        return 200


def test_a_pubrec_refused_for_quota_is_retried_never_reported_delivered(broker: Broker, identity: Any) -> None:
    stock = Run(broker, identity[1], "stock-quota", StockUncapped)
    try:
        stock.publish(200)
        before = stock.outcome()
    finally:
        stock.close()
    assert before.refused and set(before.refused) <= before.delivered and before.lost  # the fault, stock paho

    fixed = Run(broker, identity[1], "fixed-quota", Uncapped)
    try:
        fixed.publish(200)
        after = fixed.outcome()
    finally:
        fixed.close()
    assert after.refused, "the broker refused nothing: the retry was not exercised"
    refusals = [code for _, code in fixed.client.pubrecs if code >= 0x80]  # a message may be refused again
    assert fixed.client.pubrec_refusals == {QUOTA_EXCEEDED: len(refusals)}
    assert not after.failed and len(after.delivered) == 200 and not after.lost
    assert sorted(set(after.received)) == list(range(200))


def test_a_pubrec_refused_for_good_is_a_failed_publish(broker: Broker, identity: Any) -> None:
    """Not authorised (ACL): stock paho says delivered; the project's client says refused."""
    stock = Run(broker, identity[1], "stock-acl", ObservedPaho)
    try:
        stock.publish(1, DENIED)
        assert stock.outcome().delivered == {0}
        assert stock.client.pubrecs[0][1] == NOT_AUTHORIZED
    finally:
        stock.close()

    fixed = Run(broker, identity[1], "fixed-acl", ObservedReliable)
    try:
        fixed.publish(1, DENIED)
        out = fixed.outcome()
        assert out.failed == {0: NOT_AUTHORIZED} and not out.delivered
        assert fixed.client.publish_failures == 1
        with pytest.raises(RuntimeError, match="denied"):
            fixed.infos[0].wait_for_publish(1)
        fixed.publish(3)  # and the client carries on
        assert fixed.outcome().delivered == {1, 2, 3}
    finally:
        fixed.close()


class Own50(ObservedReliable):
    """The project's client asking for 50 in flight, more than Mosquitto's Receive Maximum."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_inflight_messages = 50


def test_the_server_receive_maximum_caps_what_is_in_flight(broker: Broker, identity: Any) -> None:
    run = Run(broker, identity[1], "cap", Own50)
    try:
        assert run.client.max_inflight_messages == 50  # the client's own setting is kept
        processes.send(broker.proc, signal.SIGSTOP)  # nothing acknowledged: what is sent stays in flight
        try:
            run.publish(60)
            time.sleep(0.2)
            with run.client._out_message_mutex:
                waiting = [m.state == MessageState.MQTT_MS_WAIT_FOR_PUBREC for m in run.client._out_messages.values()]
        finally:
            processes.send(broker.proc, signal.SIGCONT)
        assert sum(waiting) == MOSQUITTO_RECEIVE_MAXIMUM and waiting[:MOSQUITTO_RECEIVE_MAXIMUM] == [True] * 20
        out = run.outcome()
        assert not out.refused and out.delivered == set(range(60)) and not out.lost
        run.client.disconnect()
        run.client.loop_stop()
        run.client.max_inflight_messages = 0  # paho's "no limit": the server's Receive Maximum still is one
        assert run.client._max_inflight_messages == MOSQUITTO_RECEIVE_MAXIMUM
    finally:
        run.close()


def _pubrecd_across_a_restart(broker: Broker, ident: TLSIdentity, name: str, client_class: type[paho.Client],
                              **options: Any) -> Outcome:
    """Five QoS 2 messages PUBREC'd by the broker, whose PUBRELs the client holds back (a
    connection lost between the two), then a graceful restart."""
    run = Run(broker, ident, name, client_class, clean_start=False, **options)
    try:
        run.client.hold_pubrel = True
        run.publish(5)
        assert _wait(lambda: len(run.client.pubrecs) == 5, 5), "the broker PUBREC'd nothing"
        broker.stop_gracefully()
        run.client.hold_pubrel = False
        broker.start()
        return run.outcome()
    finally:
        run.close()


def test_a_session_lost_between_pubrec_and_pubrel_is_published_again(broker: Broker, identity: Any) -> None:
    """The connection drops after the broker's PUBREC, before the client's PUBREL, and comes back
    to a broker without the session: the publisher's did not outlive the connection (session
    expiry 0, paho's MQTT 5 default; clean start 0 on reconnecting, paho's default too). Stock
    paho resends PUBREL, the broker completes a message it does not hold, and on_publish says
    delivered; the project's client publishes it again."""
    stock = _pubrecd_across_a_restart(broker, identity[1], "stock-session", ObservedPaho, session_expiry_s=0)
    assert stock.sessions == [False, False] and stock.lost == set(range(5))
    fixed = _pubrecd_across_a_restart(broker, identity[1], "fixed-session", ObservedReliable, session_expiry_s=0)
    assert fixed.sessions == [False, False] and not fixed.lost and fixed.delivered == set(range(5))
    assert fixed.pubrecs == 10  # each published again, and PUBREC'd again


def test_an_exactly_once_session_keeps_what_was_pubrecd_across_a_graceful_restart(broker: Broker,
                                                                                  identity: Any) -> None:
    """``connect(exactly_once=True)``: the broker saves the session, PUBREC'd messages included,
    and releases them on the PUBREL resent after the restart: each delivered once."""
    out = _pubrecd_across_a_restart(broker, identity[1], "session", ObservedReliable, exactly_once=True)
    assert out.sessions == [False, True], "the broker did not keep the session"
    assert not out.lost and out.delivered == set(range(5))
    assert sorted(out.received) == list(range(5)) and out.pubrecs == 5  # released, not published again


class _Meter(Device):
    """A device of the meter role (it reads nothing), without the feeder the real one needs."""

    role = "meter"


@pytest.mark.parametrize(("qos", "clean_start"), [(1, "c1"), (2, "c0")])
def test_a_device_on_a_qos2_topology_keeps_a_session_the_broker_saves(broker: Broker, identity: Any, qos: int,
                                                                     clean_start: str) -> None:
    """Devices publish at the topology's QoS; at 2 they connect with clean start 0 (what Mosquitto
    needs to write the session to disk), at 1 as before."""
    device = _Meter(DeviceConfig(device_id="bench", delivery=broker.endpoint, control=broker.endpoint,
                                 tls=identity[1], qos=qos))
    device.start()
    device.stop()
    log = (broker.directory / "mosquitto.log").read_text()
    for plane in ("delivery", "control"):
        assert re.search(rf"as bench-{plane} \(p5, {clean_start},", log), log[-2000:]


# -- the paho internals ReliableClient relies on ---------------------------------------------------------

# sha256 of the source of every paho function ReliableClient overrides, calls or counts on the
# behaviour of, as of the paho-mqtt pinned in pyproject.toml. When one changes, read the new code
# against testbed/transport/reliable.py, run this file, then update the pin and these hashes.
CHECKED_PAHO = "2.2.0"
PAHO_SOURCES = {
    "_messages_reconnect_reset_out": "464a42c69618a49b54ab813a472a2b4cc6b8370daf79f36f91758a0330b1613c",
    "_handle_connack": "39267140212c8b5f9ec69c283f6f9d358249484858b1596bb039c0e8fed1e17c",
    "_handle_pubrec": "f2f5486e56c92cfbabd54adc6706abd5f07d4ded355b5a35e57a38967ed7c509",
    "_handle_pubackcomp": "04d39ba283b1f3bee9aa99f5b27b112eca549f889a58a8a5720d7f7873b09428",
    "_update_inflight": "d11feb21cf855b12bbda2ccccfed5655864a4eec23f19286f4721e5ec31d46b1",
    "_do_on_publish": "5bbcad6f9447107a5ba9446e6dbdbdf4eedad2734533d900db907240f75b93e4",
    "publish": "5c00cd3dcebceaae0eeac2e40402cd18fb64664c78343a6673ce0776a1608ec4",
    "max_inflight_messages": "6b52d2785857afebcfed9acf7cdf657516a172f90868950c8192073303d9ea20",
    "_packet.decode_connack": "ef22860232e6e3b0d1e5c1c425f6719ef171836ba05d01c1c8982c2b72d069e1",
    "_packet.decode_pubrec": "dc6736bc84b0072d50fbebfbbd7201bcdb279314c2c78d0f66b057f4f428fa18",
}


def _paho_source(name: str) -> str:
    if name.startswith("_packet."):
        return inspect.getsource(getattr(_packet, name.removeprefix("_packet.")))
    member = inspect.getattr_static(paho.Client, name)
    return inspect.getsource(member.fset if isinstance(member, property) else member)  # type: ignore[arg-type]


def test_paho_internals_are_those_reliable_client_was_checked_against() -> None:
    installed = version("paho-mqtt")
    pin = re.search(r'"paho-mqtt([^"]*)"', (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert pin and installed in SpecifierSet(pin.group(1)), f"paho-mqtt {installed} is not the pinned {pin}"
    hashes = {name: hashlib.sha256(_paho_source(name).encode()).hexdigest() for name in PAHO_SOURCES}
    changed = {name: h for name, h in hashes.items() if h != PAHO_SOURCES[name]}
    assert not changed, (
        f"paho-mqtt {installed} (ReliableClient was checked against {CHECKED_PAHO}) changed what "
        f"testbed/transport/reliable.py overrides or relies on: {sorted(changed)}. Re-check ReliableClient "
        f"against the new code, then update PAHO_SOURCES and the pin: {changed}")
    client = paho.Client(CallbackAPIVersion.VERSION2)
    for name in ("_out_messages", "_out_message_mutex", "_inflight_messages", "_max_inflight_messages",
                 "_in_packet", "_protocol", "_easy_log"):
        assert hasattr(client, name), f"paho.Client has no {name}: re-check testbed/transport/reliable.py"


def test_no_mqtt_client_is_made_outside_the_transport() -> None:
    """Every client gets ReliableClient's fixes only if it is made in testbed/transport/: a new
    client (an asyncio one too) belongs there, with the same treatment (README, "QoS 2 with paho
    and Debian's Mosquitto")."""
    repo = Path(__file__).resolve().parent.parent
    made = re.compile(r"\b(?:paho|mqtt)\.Client\(|^\s*(?:from|import)\s+(?:gmqtt|aiomqtt|asyncio_mqtt|amqtt)\b",
                      re.MULTILINE)
    offenders = [str(p.relative_to(repo)) for pkg in ("testbed", "devices", "brokers")
                 for p in sorted((repo / pkg).rglob("*.py"))
                 if "transport" not in p.relative_to(repo).parts and made.search(p.read_text())]
    assert not offenders, f"MQTT clients made outside testbed/transport/: {offenders}"
