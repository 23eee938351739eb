"""The monitor (NIST CSF Detect, and Respond where a policy says so).

A harness process with its own certificate (``monitor``), started by the local bus after the
devices. It watches every broker (or, one shard of several, the brokers of some sites) three
ways: their logs (connections, TLS failures, disconnects, subscriptions and, on the control
plane where debug logging is on, denied and oversize publishes: ``testbed.csf.brokerlog``), the
devices' logs (rejected commands and payloads), and the messages of every profile of the tree,
which its ACL lets it read (rates, plausibility, messages nobody reads). The rules are
``testbed.csf.detect``. Each alert is one JSON line appended to the alert file and one
``AlertProfile`` message on every control-plane broker it watches, and, if the policy of the
monitor configuration maps its kind to an action, the action is taken at once
(``testbed.csf.respond``) and its outcome written beside the alert.

Configuration (environment, set by ``testbed.backends.local``; ``testbed.backends.local.monitor_environment``):

    FMB_DEVICE_ID        the monitor's identity (certificate CN)               (default monitor)
    FMB_BROKERS          JSON {broker name: "host:port"}                       (required)
    FMB_CA, FMB_CERT, FMB_KEY   CA, certificate and key files                  (required)
    FMB_TOPOLOGY         the topology file                                     (required)
    FMB_MONITOR_LOGS     JSON {broker or device name: "file:/path" | "cmd:COMMAND"}
    FMB_MONITOR_ALERTS   the JSONL alert file (shards may share it: each alert is one
                         append of one whole line)                             (required)
    FMB_MONITOR_SITES    comma-separated sites whose brokers this shard watches (default all)
    FMB_MONITOR_CONFIG   TOML with [thresholds] and [policy] (optional file)
    FMB_CERTS_DIR, FMB_STATE_DIR   for automatic responses on the local bus
    FMB_READY_FILE       the heartbeat: written once every broker is subscribed and the logs
                         replayed, then every tick (testbed.transport.health)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from testbed.backends.local import LocalBus
from testbed.core.errors import BrokerError, DeviceError, TestbedError
from testbed.core.payloads import PayloadError, decode, encode
from testbed.core.topics import subscriptions, topic
from testbed.core.topology import Topology, load_topology
from testbed.csf.brokerlog import BrokerLogParser, device_log_event, log_sources
from testbed.csf.detect import Alert, Detector, load_monitor_config
from testbed.csf.respond import Responder
from testbed.transport.guard import counts, describe_sender, one_line
from testbed.transport.health import TICK_S, Heartbeat, install
from testbed.transport.mqtt import Endpoint, TLSIdentity, connect

__all__ = ["Monitor", "append_line", "main", "watched_sites"]

log = logging.getLogger("monitor")


class Monitor:
    """Feeds the detector from logs, messages and a clock; publishes, records and acts on alerts."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.id = env.get("FMB_DEVICE_ID", "monitor")
        topology = load_topology(env["FMB_TOPOLOGY"])
        endpoints = {name: Endpoint.parse(ep) for name, ep in json.loads(env["FMB_BROKERS"]).items()}
        self.topology = topology.with_ports({s.name: (endpoints[f"{s.name}-delivery"].port,
                                                      endpoints[f"{s.name}-control"].port)
                                             for s in topology.sites
                                             if f"{s.name}-delivery" in endpoints and f"{s.name}-control" in endpoints})
        self.endpoints = endpoints
        self.sites = watched_sites(self.topology, env.get("FMB_MONITOR_SITES", ""))
        self.brokers = [b for b in self.topology.brokers if b.site in self.sites]
        missing = [b.name for b in self.brokers if b.name not in endpoints]
        if missing:
            raise TestbedError(f"FMB_BROKERS has no address for {', '.join(missing)}: give every broker of the "
                               "sites in FMB_MONITOR_SITES")
        self.tls = TLSIdentity(Path(env["FMB_CA"]), Path(env["FMB_CERT"]), Path(env["FMB_KEY"]))
        config_path = env.get("FMB_MONITOR_CONFIG")
        self.config = load_monitor_config(Path(config_path) if config_path else None)
        self.detector = Detector(self.topology, self.config.thresholds)
        self.alerts_file = Path(env["FMB_MONITOR_ALERTS"])
        self.sources = log_sources(json.loads(env.get("FMB_MONITOR_LOGS", "{}")))
        self.parsers = {b.name: BrokerLogParser(b.name) for b in self.brokers}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._clients: dict[str, paho.Client] = {}
        # Shards (and restarts) all publish as ``monitor``: numbers from the clock keep their alerts
        # apart for the recorder, which keys messages by (source, profile, seq).
        self._seq = time.time_ns() // 1000
        self.rejected = 0  # payloads seen that do not decode (each is also fed to the rules as such)
        self._replayed = threading.Event()
        self._pending_replays = len(self.sources)
        self._responder: Responder | None = None
        ready = env.get("FMB_READY_FILE")
        self.heartbeat = Heartbeat(Path(ready) if ready else None, self.id)
        install(self.heartbeat)
        self._readers: list[threading.Thread] = []
        self._alerts = 0

    # -- inputs -------------------------------------------------------------------------------

    def _read_logs(self, source: Any) -> None:
        replaying = True
        for name, line, replay in source.lines(self._stopped):
            if replaying and not replay:
                replaying = False
                self._replay_done()
            if not name:
                continue
            if name in self.parsers:
                event = self.parsers[name].parse(line, replay=replay)
            else:
                event = device_log_event(name, line, replay=replay)
            if event is not None:
                with self._lock:
                    alerts = self.detector.on_event(event)
                self._raise(alerts)
        if replaying:
            self._replay_done()

    def _replay_done(self) -> None:
        with self._lock:
            self._pending_replays -= 1
            if self._pending_replays <= 0:
                self._replayed.set()

    def _on_message(self, broker: str, msg: paho.MQTTMessage) -> None:
        try:
            message = decode(msg.payload)
        except PayloadError as e:  # evidence for the rules (a payload nobody should send), not a reason to stop
            message = None
            self.rejected += 1
            log.warning("payload on %s from %s via %s does not decode: %s (undecodable so far: %d)",
                        one_line(msg.topic), describe_sender(msg.topic, msg.payload), broker, one_line(str(e), 300),
                        self.rejected)
        with self._lock:
            alerts = self.detector.on_message(broker, msg.topic, message, bool(msg.retain))
        self._raise(alerts)

    # -- outputs ------------------------------------------------------------------------------

    def _raise(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            record = alert.as_json()
            action = self.config.policy.get(alert.kind)
            if action:
                record["response"] = self._respond(action, record)
            line = json.dumps(record)
            with self._lock:
                append_line(self.alerts_file, line)
                self._alerts += 1
            log.warning("alert %s %s", alert.kind, line)
            self._publish(alert)

    def _respond(self, action: str, record: dict[str, Any]) -> dict[str, Any]:
        try:
            if self._responder is None:
                bus = LocalBus.attach(Path(self.env["FMB_STATE_DIR"]))
                if bus is None:
                    raise TestbedError("no running local bus to act on")
                self._responder = Responder(bus)
            outcome = self._responder.act(action, record)
            outcome["alert_to_done_ms"] = round((time.time_ns() - record["time_ns"]) / 1e6, 2)
            return outcome
        except TestbedError as e:
            return {"action": action, "error": str(e)}

    def _publish(self, alert: Alert) -> None:
        with self._lock:
            self._seq += 1
            seq = self._seq
        body = {"kind": alert.kind, "time_ns": alert.time_ns, "evidence": alert.evidence,
                "identity": alert.identity, "address": alert.address, "broker": alert.broker, "subject": alert.subject}
        payload = encode("AlertProfile", self.id, seq, json.loads(json.dumps(body, default=str)))
        for broker in self.brokers:
            client = self._clients.get(broker.name)
            if broker.plane == "control" and client is not None:
                client.publish(topic(self.topology.root, "AlertProfile", self.id), payload, 1)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        for source in self.sources:
            reader = threading.Thread(target=self._read_logs, args=(source,), daemon=True)
            reader.start()
            self._readers.append(reader)
        if not self._replayed.wait(60):
            raise DeviceError("the monitor could not read the broker logs in 60 s: check FMB_MONITOR_LOGS")
        for broker in self.brokers:
            subs = subscriptions(self.topology.root, "monitor", self.id, broker.plane)
            subscribed = threading.Event()

            def on_connect(c: paho.Client, subs: list[tuple[str, int]] = subs,
                           ev: threading.Event = subscribed) -> None:
                c.on_subscribe = lambda *a: ev.set()
                c.subscribe(subs)

            def on_message(c: paho.Client, u: Any, m: paho.MQTTMessage, b: str = broker.name) -> None:
                self._on_message(b, m)

            self._clients[broker.name] = connect(
                f"{self.id}-{broker.name}", self.tls, self.endpoints[broker.name],
                on_message=on_message, on_connect=on_connect)
            if not subscribed.wait(10):
                raise BrokerError(f"the monitor could not subscribe on {broker.name} in 10 s: check that the broker "
                                  "runs and accepts the monitor's certificate")
            self.heartbeat.watch(broker.name, self._clients[broker.name])
        self._beat()
        log.info("watching %d brokers (%s); alerts to %s; policy %s", len(self._clients), ", ".join(self.sites),
                 self.alerts_file,
                 self.config.policy or "none (detect only)")

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stopped.set())
        signal.signal(signal.SIGINT, lambda *_: self._stopped.set())
        self.start()
        while not self._stopped.wait(TICK_S):
            with self._lock:
                alerts = self.detector.tick()
            self._raise(alerts)
            self._beat()
        for c in self._clients.values():
            c.disconnect()
            c.loop_stop()
        self.heartbeat.stop()

    def _beat(self) -> None:
        # A log reader that stopped leaves the monitor blind to what that log says: not healthy.
        dead = sum(not r.is_alive() for r in self._readers)
        self.heartbeat.counters.update(counts())  # handler failures contained, dead letters
        self.heartbeat.counters["alerts"] = self._alerts
        self.heartbeat.beat([f"{dead} of {len(self._readers)} log readers stopped"] if dead else [])


def watched_sites(topology: Topology, value: str) -> list[str]:
    """The sites named by ``FMB_MONITOR_SITES`` (comma-separated; empty: every site), checked."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        return [s.name for s in topology.sites]
    known = {s.name for s in topology.sites}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise TestbedError(f"FMB_MONITOR_SITES names {', '.join(unknown)}, not a site of {topology.path}: "
                           f"use some of {', '.join(sorted(known))}")
    return names


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` in one write: monitors sharing the file never
    interleave their lines (O_APPEND; Linux writes a regular file under its inode lock)."""
    data = (line.replace("\n", " ") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        written = os.write(fd, data)
        if written != len(data):  # a full disk: say so rather than leave half a line unexplained
            raise TestbedError(f"only {written} of {len(data)} bytes of an alert reached {path}")
    finally:
        os.close(fd)


def main() -> None:
    if len(sys.argv) > 1:
        print(__doc__)
        sys.exit(0 if sys.argv[1] in ("-h", "--help") else 2)
    logging.basicConfig(stream=sys.stderr, level=os.environ.get("FMB_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    missing = [k for k in ("FMB_BROKERS", "FMB_CA", "FMB_CERT", "FMB_KEY", "FMB_TOPOLOGY", "FMB_MONITOR_ALERTS")
               if not os.environ.get(k)]
    if missing:
        raise SystemExit(f"error: set {', '.join(missing)} (see --help)")
    try:
        Monitor(dict(os.environ)).run()
    except TestbedError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
