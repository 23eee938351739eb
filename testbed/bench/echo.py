"""A control-plane responder for the benchmarks: acknowledges every bench command at once.

It stands for a device that confirms a command on the control plane (``BenchAckProfile``,
echoing the command's payload), so a command's round trip measures the control plane only.

    FMB_CONTROL    host:port of the control-plane broker
    FMB_CA, FMB_CERT, FMB_KEY, FMB_ROOT, FMB_QOS, FMB_DEVICE_ID (the responder's mRID)
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from testbed.core.topics import topic
from testbed.transport.mqtt import Endpoint, TLSIdentity, connect


def main() -> None:
    env = os.environ
    root, qos, ident = env.get("FMB_ROOT", "fmb"), int(env.get("FMB_QOS", "1")), env["FMB_DEVICE_ID"]
    tls = TLSIdentity(Path(env["FMB_CA"]), Path(env["FMB_CERT"]), Path(env["FMB_KEY"]))
    ack_topic = topic(root, "BenchAckProfile", ident)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        client.publish(ack_topic, msg.payload, qos)

    client = connect(f"{ident}-responder", tls, Endpoint.parse(env["FMB_CONTROL"]), on_message=on_message,
                     on_connect=lambda c: c.subscribe(topic(root, "BenchCommandProfile", ident), qos))
    ready = env.get("FMB_READY_FILE")
    if ready:
        Path(ready).write_text(str(os.getpid()))
    stop.wait()
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
