"""How long from an alert to cut-off, for each response (a benchmark: figures, not a test).

For each repetition a victim connects with an identity of its own and the action starts at ``t0``
(the moment an automatic policy would act on an alert). Cut-off is, per action:

* ``revoke`` and ``block`` (identity): the victim's connection is dropped by the broker; for
  revoke, its reconnection is then refused at the TLS handshake (checked, not timed);
* ``block-topic``: the first publish on the blocked topic refused with reason 0x87, the victim
  publishing 200 messages a second with QoS 1.

The result is a JSON document with the conditions, the machine and percentiles per action.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from testbed.core.results import CutoffAction, CutoffRepetition, CutoffResult
from testbed.core.stats import percentiles
from testbed.core.topics import topic
from testbed.csf.respond import Responder
from testbed.transport.mqtt import TLSIdentity, connect

__all__ = ["measure_cutoff", "tls_refused"]


def tls_refused(bus: Any, identity: str, broker: str) -> bool:
    """Whether ``broker`` refuses ``identity``'s certificate now: no CONNACK to a v5 CONNECT.

    (With TLS 1.3 the client's side of the handshake can complete before the broker checks the
    certificate; the refusal then shows as an alert or a closed socket instead of a CONNACK.)
    """
    paths = bus.pki.client(identity)
    ctx = ssl.create_default_context(cafile=str(bus.pki.ca_cert))
    ctx.load_cert_chain(str(paths.cert), str(paths.key))
    ep = bus.endpoint(broker)
    cid = b"revocation-check"
    body = b"\x00\x04MQTT\x05\x02\x00\x3c\x00" + len(cid).to_bytes(2, "big") + cid
    try:
        with socket.create_connection((ep.host, ep.port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=ep.host) as tls:
            tls.sendall(b"\x10" + bytes([len(body)]) + body)
            reply = tls.recv(8)
    except (ssl.SSLError, OSError):
        return True
    return not (len(reply) >= 4 and reply[0] == 0x20 and reply[3] == 0)


def _victim(bus: Any, identity: str, broker: str) -> tuple[paho.Client, threading.Event]:
    dropped = threading.Event()
    paths = bus.pki.client(identity)
    client = connect(f"victim-{identity}", TLSIdentity(bus.pki.ca_cert, paths.cert, paths.key),
                     bus.endpoint(broker))
    client.on_disconnect = lambda *a: dropped.set()
    return client, dropped


def _one(bus: Any, responder: Responder, action: str, rep: int, broker: str) -> CutoffRepetition:
    if action == "block-topic":
        name = topic(bus.topology.root, "BenchFloodProfile", f"cutoff-{os.getpid()}-{rep}")
        denied = threading.Event()
        client = connect(f"cutoff-pub-{rep}", bus.identity("bench"), bus.endpoint(broker))
        t_denied = [0.0]

        def on_publish(c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
            if reason.value == 0x87 and not denied.is_set():
                t_denied[0] = time.perf_counter()
                denied.set()

        client.on_publish = on_publish
        stop = threading.Event()

        def flood() -> None:
            while not stop.is_set():
                client.publish(name, b"{}", 1)
                time.sleep(0.005)

        threading.Thread(target=flood, daemon=True).start()
        time.sleep(0.2)
        t0 = time.perf_counter()
        outcome = responder.block(name)
        denied.wait(5)
        stop.set()
        client.disconnect()
        client.loop_stop()
        responder.unblock(name)
        return {"cutoff_ms": round((t_denied[0] - t0) * 1000, 2) if denied.is_set() else None, "steps": outcome["ms"]}
    identity = f"intruder-{dt.datetime.now():%H%M%S}-{os.getpid()}-{rep}"
    ca = getattr(bus, "ca", None)  # the Compose bus: the CA is in its pki volume, issued by a one-shot container
    if ca is not None:
        ca("issue", identity)
    else:
        bus.pki.issue_client(identity)
    client, dropped = _victim(bus, identity, broker)
    t_drop = [0.0]

    def on_disconnect(*a: Any) -> None:
        t_drop[0] = time.perf_counter()
        dropped.set()

    client.on_disconnect = on_disconnect
    t0 = time.perf_counter()
    outcome = responder.revoke(identity) if action == "revoke" else responder.block(identity)
    dropped.wait(5)
    client.disconnect()
    client.loop_stop()
    refused = tls_refused(bus, identity, broker) if action == "revoke" else None
    if action == "block":
        responder.unblock(identity)
    return {"cutoff_ms": round((t_drop[0] - t0) * 1000, 2) if dropped.is_set() else None,
            "reconnect_refused": refused, "steps": outcome["ms"]}


def measure_cutoff(bus: Any, actions: tuple[str, ...] = ("revoke", "block", "block-topic"), repeat: int = 5,
                   broker: str | None = None, backend: str = "local") -> CutoffResult:
    """Time from the start of each action to cut-off, ``repeat`` times each, as a result document.

    On the Compose bus (``backend="docker"``) the CA and ACL work runs in a one-shot container and the
    reload is a SIGHUP to each broker container, waited for in its log: that is what the figure times."""
    load_before = os.getloadavg()[0]
    broker = broker or bus.topology.first((b.name for b in bus.topology.brokers if b.plane == "delivery"),
                                          "delivery-plane broker")
    responder = Responder(bus)
    results: dict[str, CutoffAction] = {}
    for action in actions:
        reps = [_one(bus, responder, action, i, broker) for i in range(repeat)]
        values = [r["cutoff_ms"] for r in reps if r["cutoff_ms"] is not None]
        results[action] = {"cutoff_ms": percentiles(values) if values else None,
                           "not_cut_off": sum(r["cutoff_ms"] is None for r in reps), "repetitions": reps}
    return {
        "schema": 1, "benchmark": "respond-cutoff",
        "conditions": {"broker": broker, "repeat": repeat, "topology": bus.topology.path,
                       "eviction": "dynamic-security disableClient", "backend": backend,
                       "reload": ("SIGHUP to each broker container, waited for in `docker logs`" if backend == "docker"
                                  else "SIGHUP, waited for in the log"),
                       "ca": ("one-shot container made as init's (Docker engine API), every volume re-filled"
                              if backend == "docker" else "in process, the host's certs/"),
                       "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
        "environment": {"python": platform.python_version(), "machine": platform.machine(),
                        "kernel": platform.release(), "cpus": os.cpu_count(),
                        "time": dt.datetime.now().isoformat(timespec="seconds")},
        "results": results,
    }


def write_result(result: CutoffResult, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench-respond.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
