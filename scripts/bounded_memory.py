"""Measure the recorder's and a monitor shard's memory under 10,000 identities at about 1,000 msg/s.

Not a test (and no benchmark of the package): the figure issue 12 asks for, reproducible.
An Appendix A bus on free ports (local processes, the monitor left out), then in separate
processes: a load generator with the harness's ``operator`` identity publishing, over mutual TLS
on the field control broker, commands addressed to 10,000 distinct meters (each payload names
its meter as the source, as a fleet's would), a recorder watching every broker (in this process),
and one monitor shard (``monitor_environment(sites=["field"])``) with thresholds raised so the
synthetic traffic raises no alerts. Every ``--sample-s`` seconds the resident set size (RSS) of
the recorder's process and of the monitor shard are printed, then a JSON summary.

    .venv/bin/python scripts/bounded_memory.py [--seconds 60] [--rate 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testbed.backends.local import LocalBus, monitor_environment
from testbed.core.topology import load_topology
from testbed.harness.recorder import Recorder
from testbed.security.provision import ensure_pki

LOAD = """
import sys, time, json
from testbed.core.payloads import encode
from testbed.transport.mqtt import Endpoint, TLSIdentity, connect
from pathlib import Path
ident = TLSIdentity(*(Path(p) for p in sys.argv[1:4]))
client = connect("bounded-load", ident, Endpoint.parse(sys.argv[4]))
seconds, rate = float(sys.argv[5]), float(sys.argv[6])
start, n = time.monotonic(), 0
while time.monotonic() - start < seconds:
    k = n % 10_000
    body = {"setpoint_v": 120.0}
    payload = encode("SupplyControlProfile", f"meter-{k:05d}", n + 1, body)
    client.publish(f"fmb/supplymodule/SupplyControlProfile/meter-{k:05d}", payload, 1)
    n += 1
    ahead = start + n / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
print(n, flush=True)
client.disconnect(); client.loop_stop()
"""


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--capacity", type=int, default=20_000)
    args = ap.parse_args()
    topology = load_topology().with_free_ports()
    with tempfile.TemporaryDirectory(prefix="fmb-bounded-") as tmp:
        root = Path(tmp)
        pki = ensure_pki(topology, root / "certs")
        bus = LocalBus(topology, pki, root / "state", monitor=False, ui_port=None)
        bus.start()
        monitor = None
        try:
            (root / "state" / "monitor.toml").write_text(
                "[thresholds]\nundeliverable = 1000000\nrate_msgs_per_s = 1000000\n")
            env = monitor_environment(topology, pki.directory.resolve(), bus.state_dir, bus.log_dir, bus.run_dir,
                                      sites=["field"])
            log = open(bus.log_dir / "monitor-field.log", "w")  # noqa: SIM115
            monitor = subprocess.Popen([sys.executable, "-m", "testbed.csf.monitor"], env={**os.environ, **env},
                                       stdout=log, stderr=subprocess.STDOUT)
            ready = Path(env["FMB_READY_FILE"])
            while not ready.exists():
                if monitor.poll() is not None:
                    raise SystemExit(f"the monitor shard stopped: see {log.name}")
                time.sleep(0.2)
            recorder = Recorder(topology, bus.identity("recorder"),
                                {b.name: bus.endpoint(b.name) for b in topology.brokers},
                                capacity=args.capacity, spool_dir=root)
            recorder.start()
            op = bus.identity("operator")
            load = subprocess.Popen([sys.executable, "-c", LOAD, str(op.ca), str(op.cert), str(op.key),
                                     f"{bus.endpoint('field-control').host}:{bus.endpoint('field-control').port}",
                                     str(args.seconds), str(args.rate)], stdout=subprocess.PIPE, text=True)
            samples = []
            start = time.monotonic()
            while load.poll() is None:
                time.sleep(args.sample_s)
                row = {"t_s": round(time.monotonic() - start, 1), "recorded": recorder.mark(),
                       "held": recorder.held(), "recorder_rss_kb": rss_kb(os.getpid()),
                       "monitor_rss_kb": rss_kb(monitor.pid)}
                samples.append(row)
                print(json.dumps(row), flush=True)
            sent = int((load.stdout.read() if load.stdout else "0").strip() or 0)
            time.sleep(2)
            recorder.stop()
            out = root / "messages.jsonl"
            recorder.write_jsonl(out)
            lines = len(out.read_text().splitlines())
            print(json.dumps({"sent": sent, "seconds": args.seconds, "rate": args.rate, "capacity": args.capacity,
                              "recorded": recorder.mark(), "jsonl_lines": lines, "jsonl_bytes": out.stat().st_size,
                              "samples": samples}))
        finally:
            if monitor is not None:
                monitor.terminate()
                monitor.wait(10)
            bus.stop()


if __name__ == "__main__":
    main()
