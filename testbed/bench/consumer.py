"""A central consumer for the recovery benchmark: a persistent session that logs what it gets.

It subscribes like the DMS does (QoS 1 or 2, ``clean_start`` false, a session expiry), and
appends ``<seq> <receive time ns>`` for every message to a file, flushed at once, so that a
``kill -9`` loses nothing it had already received.

    FMB_BROKER     host:port
    FMB_CA, FMB_CERT, FMB_KEY, FMB_TOPIC, FMB_QOS, FMB_CLIENT_ID, FMB_SESSION_EXPIRY, FMB_OUT
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from testbed.transport.guard import one_line, set_aside
from testbed.transport.mqtt import Endpoint, TLSIdentity, connect


def main() -> None:
    env = os.environ
    tls = TLSIdentity(Path(env["FMB_CA"]), Path(env["FMB_CERT"]), Path(env["FMB_KEY"]))
    qos = int(env.get("FMB_QOS", "1"))
    out = open(env["FMB_OUT"], "a", buffering=1)  # noqa: SIM115 - line-buffered for the process's life
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    low, high = (float(x) for x in env.get("FMB_RECONNECT", "0.25,5").split(","))

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            seq = int(msg.payload.split(b",", 1)[0])
        except ValueError:  # not a benchmark message: set aside and acknowledged, so the session still drains
            logging.getLogger("consumer").warning("not a benchmark payload on %s (%d bytes): set aside",
                                                  one_line(msg.topic), len(msg.payload))
            set_aside(msg, "not a benchmark payload (<seq>,<padding>)", env["FMB_CLIENT_ID"])
            return
        out.write(f"{seq} {time.time_ns()}\n")

    client = connect(env["FMB_CLIENT_ID"], tls, Endpoint.parse(env["FMB_BROKER"]), on_message=on_message,
                     on_connect=lambda c: c.subscribe(env["FMB_TOPIC"], qos), clean_start=False,
                     session_expiry_s=int(env.get("FMB_SESSION_EXPIRY", "3600")), wait_s=None,
                     reconnect_s=(low, high))
    stop.wait()
    client.disconnect()
    client.loop_stop()
    out.close()


if __name__ == "__main__":
    main()
