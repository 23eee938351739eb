"""The local backend: brokers, the feeder model and devices as processes on this machine.

:class:`LocalBus` writes every broker's configuration from the topology, starts the
data-centre brokers, then the field brokers (whose bridges connect out), then the feeder
models and the devices (the DMS and the tablet first, so they see the field devices' first
reports), waiting for each to be ready. It records what it started in ``<state>/bus.json`` so
that another command (``fmb run``, ``fmb certs revoke``, ``fmb down``) can find the running
bus; processes are stopped by the pid recorded, after checking the pid is still ours.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from brokers.mosquitto import BrokerFiles, mosquitto_binary, render_broker
from devices.feeder_file import write_feeders
from testbed.backends import processes
from testbed.backends.processes import ProcessRecord
from testbed.backends.saver import broker_argv
from testbed.core.errors import BrokerError, DeviceError, TestbedError
from testbed.core.topics import PROFILES, ROLES, Plane
from testbed.core.topology import DeviceSpec, Topology, load_topology
from testbed.core.waiting import wait_until
from testbed.security.blocklist import Blocklist
from testbed.security.pki import PKI
from testbed.transport.health import read_health
from testbed.transport.mqtt import Endpoint, TLSIdentity

__all__ = ["LocalBus", "ProcessRecord", "device_environment", "monitor_environment"]

START_ORDER = ("dms", "tablet", "supply", "capbank", "meter")
# Loaded beside the acl_file when installed (Debian's mosquitto): how the responder evicts sessions.
DYNSEC_PLUGIN = os.environ.get("FMB_DYNSEC_PLUGIN", "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")


def device_environment(topology: Topology, device: DeviceSpec, certs: Path, run_dir: Path,
                       hosts: dict[str, str] | None = None) -> dict[str, str]:
    """The ``FMB_*`` environment of one device (the same for a process and a container)."""
    def endpoint(plane: Plane) -> str:
        b = topology.broker_for(device.site, plane)
        return f"{(hosts or {}).get(b.name, b.host)}:{b.port}"

    env = {
        "FMB_DEVICE_ID": device.id,
        "FMB_DELIVERY": endpoint("delivery"),
        "FMB_CONTROL": endpoint("control"),
        "FMB_CA": str(certs / "ca" / "ca.pem"),
        "FMB_CERT": str(certs / "clients" / f"{device.id}.pem"),
        "FMB_KEY": str(certs / "clients" / f"{device.id}.key"),
        "FMB_ROOT": topology.root,
        "FMB_QOS": str(topology.qos),
        "FMB_READY_FILE": str(run_dir / f"{device.id}.ready"),
    }
    signers = topology.command_signers()
    if device.id in signers:
        env["FMB_SIGNING_KEY"] = str(certs / "signing" / f"{device.id}.key")
    trusted = topology.command_signers(device)
    if any(PROFILES[g.profile].kind == "command" for g in ROLES[device.role].reads):
        env["FMB_SIGNING_DIR"] = str(certs / "signing")
        env["FMB_SIGNERS"] = ",".join(trusted)
    if device.role == "dms":
        env["FMB_SESSION_EXPIRY"] = str(topology.site(device.site).session_expiry_s)
        env["FMB_FEEDERS_FILE"] = str(write_feeders(topology, run_dir))  # an env var holds a few hundred at most
    if device.role == "tablet":
        env["FMB_UI_SOCKET"] = str(run_dir / f"{device.id}.sock")
        env["FMB_UI_CERT"] = str(certs / "servers" / f"{device.id}-ui.pem")
        env["FMB_UI_KEY"] = str(certs / "servers" / f"{device.id}-ui.key")
        env["FMB_UI_URL_FILE"] = str(run_dir / f"{device.id}.url")
        env["FMB_DMS"] = ",".join(d.id for d in topology.devices if d.role == "dms")  # whose diagrams it shows
    f = topology.feeder_of(device.id)
    if f is not None:
        env["FMB_FEEDER_SOCKET"] = str(run_dir / f"{f.id}.sock")
        if device.role == "meter":
            env["FMB_METER_DEADBAND_V"] = str(f.meter_deadband_v)
            env["FMB_METER_PERIOD_S"] = str(f.meter_period_s)
    return env


def monitor_environment(topology: Topology, certs: Path, state_dir: Path, log_dir: Path,
                        run_dir: Path) -> dict[str, str]:
    """The monitor's ``FMB_*`` environment on the local bus (logs tailed from their files)."""
    logs = {b.name: f"file:{log_dir / (b.name + '.log')}" for b in topology.brokers}
    # Every device that reads: actuators log the commands they refuse, every reader the payloads.
    readers = [d.id for d in topology.devices if ROLES[d.role].reads]
    logs.update({d: f"file:{log_dir / (d + '.log')}" for d in readers})
    return {
        "FMB_DEVICE_ID": "monitor",
        "FMB_BROKERS": json.dumps({b.name: f"{b.host}:{b.port}" for b in topology.brokers}),
        "FMB_CA": str(certs / "ca" / "ca.pem"),
        "FMB_CERT": str(certs / "clients" / "monitor.pem"),
        "FMB_KEY": str(certs / "clients" / "monitor.key"),
        "FMB_TOPOLOGY": topology.path,
        "FMB_MONITOR_LOGS": json.dumps(logs),
        "FMB_MONITOR_ALERTS": str(state_dir / "alerts.jsonl"),
        "FMB_MONITOR_CONFIG": str(state_dir / "monitor.toml"),
        "FMB_CERTS_DIR": str(certs),
        "FMB_STATE_DIR": str(state_dir),
        "FMB_READY_FILE": str(run_dir / "monitor.ready"),
    }


class LocalBus:
    """Brokers and devices of one topology as local processes, with state in ``state_dir``."""

    def __init__(self, topology: Topology, pki: PKI, state_dir: Path, monitor: bool = True,
                 ui_port: int | None = 0, runs_dir: Path | None = None) -> None:
        self.topology = topology
        # The tablets' web consoles: the first on ui_port (0: any free port), the next on ui_port + 1, ...;
        # None serves none. The page shows the newest run of runs_dir and runs Appendix A into it.
        self.ui_port = ui_port
        self.runs_dir = (runs_dir or state_dir / "runs").resolve()
        self.monitor = monitor  # start the monitor (testbed/csf/monitor.py, Detect) after the devices
        self.pki = pki
        self.state_dir = state_dir.resolve()
        self.run_dir = self.state_dir / "run"
        self.log_dir = self.state_dir / "logs"
        self.processes: list[ProcessRecord] = []

    # -- finding a running bus ----------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.state_dir / "bus.json"

    @classmethod
    def attach(cls, state_dir: Path) -> LocalBus | None:
        """The bus recorded in ``state_dir`` if its brokers are still running, else None."""
        path = state_dir / "bus.json"
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise TestbedError(f"{path} is not a readable bus record ({e}); if no bus runs from {state_dir}, "
                               "delete it") from None
        runs = Path(data["runs_dir"]) if data.get("runs_dir") else None
        bus = cls(load_topology(data["topology"]), PKI(Path(data["certs"])), state_dir,
                  ui_port=data.get("ui_port", 0), runs_dir=runs)
        bus.topology = bus.topology.with_ports({k: tuple(v) for k, v in data["ports"].items()})
        bus.processes = [ProcessRecord(**p) for p in data["processes"]]
        if not any(p.kind == "broker" and processes.alive(p) for p in bus.processes):
            return None
        return bus

    def _save(self) -> None:
        data = {
            "topology": self.topology.path,
            "certs": str(self.pki.directory),
            "ports": {s.name: [s.delivery_port, s.control_port] for s in self.topology.sites},
            "ui_port": self.ui_port,
            "runs_dir": str(self.runs_dir),
            "processes": [asdict(p) for p in self.processes],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_file)

    # -- identities the harness uses ------------------------------------------------------------

    def identity(self, name: str) -> TLSIdentity:
        paths = self.pki.client(name)
        return TLSIdentity(self.pki.ca_cert, paths.cert, paths.key)

    def endpoint(self, broker: str) -> Endpoint:
        b = self.topology.broker(broker)
        return Endpoint(b.host, b.port)

    def ui_socket(self, device_id: str) -> Path:
        return self.run_dir / f"{device_id}.sock"

    def ui_url(self, device_id: str) -> str | None:
        """The URL (access token included) of a tablet's web console, once it serves."""
        try:
            return (self.run_dir / f"{device_id}.url").read_text().strip() or None
        except OSError:
            return None

    def device_log(self, device_id: str) -> Path:
        return self.log_dir / f"{device_id}.log"

    # -- start and stop -----------------------------------------------------------------------

    def start(self) -> None:
        """Start everything; on any failure stop what was started and raise."""
        if LocalBus.attach(self.state_dir) is not None:
            raise TestbedError(f"a bus is already running from {self.state_dir}; `fmb down` first")
        mosquitto = mosquitto_binary()
        # The host has Debian's Mosquitto 2.0; another build (2.1, an image) runs only in a container.
        for broker in self.topology.brokers:
            if broker.mosquitto != "2.0":
                raise BrokerError(f"broker {broker.name} asks for Mosquitto {broker.mosquitto} ({self.topology.path}), "
                                  "which runs only in a container: use --backend docker (images: scripts/images "
                                  "--broker all), or set mosquitto = '2.0' for the local backend")
        if not self.pki.exists():
            raise TestbedError(f"no PKI in {self.pki.directory}; run `fmb certs init` first")
        for d in (self.run_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        for stale in self.run_dir.glob("*.url"):  # a new bus, new access tokens
            stale.unlink()
        try:
            for site in sorted(self.topology.sites, key=lambda s: s.bridge_to is not None):
                for broker in (b for b in self.topology.brokers if b.site == site.name):
                    self._start_broker(mosquitto, broker.name)
            for bridge in self.topology.bridges:
                for way in self.topology.bridge_connections(bridge):
                    name = f"{bridge.name}-{way}"
                    self._wait_log(self.topology.bridge_endpoints(bridge, way)[1], f" as {name} ",
                                   f"bridge {name}")
            for feeder in self.topology.feeders:
                self._start_feeder(feeder.id)
            for role in START_ORDER:
                for device in (d for d in self.topology.devices if d.role == role and not d.external):
                    self._start_device(device)
            if self.monitor:
                self._start_monitor()
        except BaseException:
            self.stop()
            raise
        self._save()

    def _spawn(self, name: str, kind: str, argv: list[str], env: dict[str, str] | None = None) -> ProcessRecord:
        record = processes.spawn(name, kind, argv, self.log_dir / f"{name}.log", env,
                                 cwd=Path(__file__).resolve().parents[2])
        self.processes.append(record)
        self._save()
        return record

    def _start_broker(self, mosquitto: str, name: str) -> None:
        broker = self.topology.broker(name)
        directory = self.state_dir / "brokers" / name
        (directory / "data").mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        blocks = Blocklist.load(self.state_dir)
        dynsec = Path(DYNSEC_PLUGIN)
        # Debug logging on the control plane only: it is how Mosquitto reports denied and oversize
        # publishes, and commands are few; on the delivery plane it would cost ~10 us of broker CPU
        # and ~350 bytes of log per message (testbed/csf/README-monitor.md).
        files = BrokerFiles(certs=self.pki.directory.resolve(), directory=directory, log=log,
                            user=getpass.getuser(), debug_log=broker.plane == "control",
                            dynsec_plugin=dynsec if dynsec.exists() else None,
                            blocked_identities=tuple(blocks.identities), blocked_topics=tuple(blocks.topics))
        for filename, text in render_broker(self.topology, broker, files).items():
            (directory / filename).write_text(text)
        offset = log.stat().st_size if log.exists() else 0
        argv = broker_argv(mosquitto, directory / "mosquitto.conf", broker.snapshot_every_ms)  # a ticker if asked
        record = self._spawn(name, "broker", argv)
        self._wait_log(name, " running", f"broker {name}", offset=offset, record=record)

    def _start_feeder(self, feeder_id: str) -> None:
        spec = self.topology.feeder(feeder_id)
        sock = self.run_dir / f"{feeder_id}.sock"
        sock.unlink(missing_ok=True)
        record = self._spawn(feeder_id, "feeder", [sys.executable, "-m", "devices.feeder"], {
            "FMB_FEEDER": json.dumps(asdict(spec)), "FMB_FEEDER_SOCKET": str(sock)})
        self._wait_for(lambda: sock.exists(), record, f"feeder {feeder_id}", 10)

    def _start_monitor(self) -> None:
        env = monitor_environment(self.topology, self.pki.directory.resolve(), self.state_dir, self.log_dir,
                                  self.run_dir)
        ready = Path(env["FMB_READY_FILE"])
        ready.unlink(missing_ok=True)
        record = self._spawn("monitor", "monitor", [sys.executable, "-m", "testbed.csf.monitor"], env)
        self._wait_for(ready.exists, record, "monitor", 60)

    def _start_device(self, device: DeviceSpec, restart: bool = False) -> None:
        env = device_environment(self.topology, device, self.pki.directory.resolve(), self.run_dir)
        if device.role == "tablet" and self.ui_port is not None:
            index = [d.id for d in self.topology.devices if d.role == "tablet"].index(device.id)
            port = self.ui_port + index if self.ui_port else 0
            old = self.ui_url(device.id) if restart else None
            if old:  # a restarted tablet keeps its address and token: open pages reconnect by themselves
                split = urllib.parse.urlsplit(old)
                port = split.port or port
                env["FMB_UI_TOKEN"] = urllib.parse.parse_qs(split.query).get("token", [""])[0]
            env["FMB_UI_HTTP"] = f"127.0.0.1:{port}"
            env["FMB_UI_RUNS"] = str(self.runs_dir)
            env["FMB_UI_RUN_COMMAND"] = json.dumps([
                sys.executable, "-m", "testbed.cli", "run", "appendix-a", "--no-start",
                "--state", str(self.state_dir), "--certs", str(self.pki.directory.resolve())])
        ready = Path(env["FMB_READY_FILE"])
        ready.unlink(missing_ok=True)
        record = self._spawn(device.id, "device", [sys.executable, "-m", f"devices.{device.role}"], env)
        self._wait_for(ready.exists, record, f"device {device.id}", 30)

    def _wait_log(self, name: str, needle: str, what: str, offset: int = 0,
                  record: ProcessRecord | None = None, timeout_s: float = 15) -> None:
        log = self.log_dir / f"{name}.log"

        def found() -> bool:
            try:
                with open(log, "rb") as f:
                    f.seek(offset)
                    return needle.encode() in f.read()
            except OSError:
                return False

        self._wait_for(found, record or self._record(name), what, timeout_s)

    def _wait_for(self, condition: Callable[[], bool], record: ProcessRecord, what: str, timeout_s: float) -> None:
        error = BrokerError if record.kind == "broker" else DeviceError

        def ready() -> bool:
            if condition():
                return True
            if not processes.alive(record):
                raise error(f"{what} exited at start-up: {self._tail(record)} (log: {record.log})")
            return False

        wait_until(ready, timeout_s, interval_s=0.02, error=error,
                   what=lambda: f"{what} not ready after {timeout_s:g} s: {self._tail(record)} (log: {record.log})")

    def _record(self, name: str) -> ProcessRecord:
        for p in self.processes:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.processes) or "none"
        raise TestbedError(f"no process {name!r} in the bus running from {self.state_dir} (its processes: {known})")

    @staticmethod
    def _tail(record: ProcessRecord) -> str:
        try:
            lines = [ln for ln in Path(record.log).read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:]) or "(empty log)"

    def alive(self, name: str) -> bool:
        return processes.alive(self._record(name))

    def health(self, name: str) -> tuple[str, str]:
        """``("up" | "unhealthy" | "DOWN", why)`` of process ``name``. A running device or monitor is
        up only while its heartbeat says its MQTT clients work (testbed.transport.health): a process
        whose network thread died, or cut off from a broker past its backoff, is still alive."""
        record = self._record(name)
        if not processes.alive(record):
            return "DOWN", "not running"
        if record.kind not in ("device", "monitor"):
            return "up", ""
        health = read_health(self.run_dir / f"{name}.ready", pid=record.pid)
        return ("up", "") if health.healthy else ("unhealthy", health.why)

    def signal(self, name: str, sig: signal.Signals) -> None:
        """Send ``sig`` to one of our processes (by recorded pid, if it is still ours)."""
        processes.send(self._record(name), sig)

    def stop_process(self, name: str, timeout_s: float = 10) -> None:
        """SIGTERM process ``name`` if it still runs; SIGKILL it if it has not exited after ``timeout_s``."""
        processes.stop([self._record(name)], timeout_s)

    def restart(self, name: str, timeout_s: float = 10) -> None:
        """Stop process ``name`` if it still runs, start it as at start-up, wait until ready."""
        record = self._record(name)
        processes.stop([record], timeout_s)
        self.processes.remove(record)
        if record.kind == "broker":
            self._start_broker(mosquitto_binary(), name)
        elif record.kind == "feeder":
            self._start_feeder(name)
        elif record.kind == "monitor":
            self._start_monitor()
        else:
            self._start_device(self.topology.device(name), restart=True)
        self._save()

    def reload_brokers(self, timeout_s: float = 10) -> int:
        """SIGHUP every running broker (re-reads certificates, CRL and ACL) and wait until each has
        logged the reload, so that what follows meets the new configuration; returns how many."""
        brokers = [p for p in self.processes if p.kind == "broker" and processes.alive(p)]
        offsets = {p.name: Path(p.log).stat().st_size for p in brokers}
        for p in brokers:
            processes.send(p, signal.SIGHUP)
        for p in brokers:
            self._wait_log(p.name, "Reloading config", f"broker {p.name} reload", offset=offsets[p.name],
                           record=p, timeout_s=timeout_s)
        return len(brokers)

    def stop(self, timeout_s: float = 10) -> None:
        """Stop devices, feeders, then brokers (so the data-centre brokers save last)."""
        order = {"monitor": 0, "device": 1, "feeder": 2, "broker": 3}
        for kind in sorted(order, key=order.__getitem__):
            processes.stop([p for p in self.processes if p.kind == kind], timeout_s)
        self.processes = []
        self.state_file.unlink(missing_ok=True)
