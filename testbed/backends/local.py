"""The local backend: brokers, the feeder model, devices and fleets as processes on this machine.

:class:`LocalBus` writes every broker's configuration from the topology, starts the
data-centre brokers, then the field brokers (whose bridges connect out), then the feeder
models, then the devices role by role (the DMS and the tablets first, so they see the field
devices' first reports; a substation's meters as one fleet process, ``testbed.backends.fleets``).
Each of those steps starts all of its processes at once and then waits until every one is ready
(its log line, its heartbeat), so a bus of many substations starts in about the time of its
slowest process per step, not the sum. Each broker may hold the connections its site's clients
need: ``max_connections`` from the topology and an open-files limit raised to match. It records
what it started in ``<state>/bus.json`` so that another command (``fmb run``, ``fmb certs
revoke``, ``fmb down``) can find the running bus; processes are stopped by the pid recorded,
after checking the pid is still ours.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from brokers.mosquitto import BrokerFiles, connection_budget, expected_clients, mosquitto_binary, render_broker
from devices.feeder_file import write_feeders
from testbed.backends import processes
from testbed.backends.fleets import FleetState, fleet_environment, fleet_ready_timeout, fleet_state
from testbed.backends.processes import ProcessRecord
from testbed.backends.saver import broker_argv
from testbed.core.errors import BrokerError, DeviceError, TestbedError
from testbed.core.topics import PROFILES, ROLES, Plane
from testbed.core.topology import BridgeSpec, DeviceSpec, Topology, load_topology
from testbed.core.waiting import wait_until
from testbed.security.blocklist import Blocklist
from testbed.security.pki import PKI
from testbed.transport.health import read_health
from testbed.transport.mqtt import Endpoint, TLSIdentity

__all__ = ["LocalBus", "ProcessRecord", "device_environment", "monitor_environment"]

START_ORDER = ("dms", "tablet", "supply", "capbank", "meter")  # fleets start with the meters
# Descriptors a broker holds besides its clients' connections: listener, log, epoll, persistence, plugin...
BROKER_FD_MARGIN = 64
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
                        run_dir: Path, sites: Sequence[str] | None = None) -> dict[str, str]:
    """The monitor's ``FMB_*`` environment on the local bus (logs tailed from their files); with
    ``sites``, a shard's: only those sites' brokers, their devices' logs, its own ready file. Every
    shard appends to the one alert file."""
    chosen = [s.name for s in topology.sites] if sites is None else list(sites)
    unknown = sorted(set(chosen) - {s.name for s in topology.sites})
    if unknown or not chosen:
        raise TestbedError(f"a monitor shard needs sites of {topology.path}; {', '.join(unknown) or 'none'} given")
    brokers = [b for b in topology.brokers if b.site in chosen]
    logs = {b.name: f"file:{log_dir / (b.name + '.log')}" for b in brokers}
    # Every device that reads: actuators log the commands they refuse, every reader the payloads.
    readers = [d.id for d in topology.devices if ROLES[d.role].reads and d.site in chosen]
    logs.update({d: f"file:{log_dir / (d + '.log')}" for d in readers})
    shard = "" if sites is None else "-" + "+".join(chosen)
    return {
        "FMB_DEVICE_ID": "monitor",
        "FMB_BROKERS": json.dumps({b.name: f"{b.host}:{b.port}" for b in brokers}),
        "FMB_MONITOR_SITES": ",".join(chosen),
        "FMB_CA": str(certs / "ca" / "ca.pem"),
        "FMB_CERT": str(certs / "clients" / "monitor.pem"),
        "FMB_KEY": str(certs / "clients" / "monitor.key"),
        "FMB_TOPOLOGY": topology.path,
        "FMB_MONITOR_LOGS": json.dumps(logs),
        "FMB_MONITOR_ALERTS": str(state_dir / "alerts.jsonl"),
        "FMB_MONITOR_CONFIG": str(state_dir / "monitor.toml"),
        "FMB_CERTS_DIR": str(certs),
        "FMB_STATE_DIR": str(state_dir),
        "FMB_READY_FILE": str(run_dir / f"monitor{shard}.ready"),
    }


@dataclass(frozen=True)
class _Starting:
    """A process just spawned, and how to tell that it is ready."""

    record: ProcessRecord
    ready: Callable[[], bool]
    what: str
    timeout_s: float  # with ``progress``: counted from its last change, not from the start
    progress: Callable[[], str] | None = None  # how far it got (a fleet: meters connected), said on a time-out


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
            for field in (False, True):  # the data centre first: the field brokers' bridges connect to it
                self._wait_all([self._launch_broker(mosquitto, b.name) for b in self.topology.brokers
                                if (self.topology.site(b.site).bridge_to is not None) == field])
            self._wait_all([self._bridge_up(bridge, way) for bridge in self.topology.bridges
                            for way in self.topology.bridge_connections(bridge)])
            self._wait_all([self._launch_feeder(f.id) for f in self.topology.feeders])
            for role in START_ORDER:
                group = [self._launch_device(d) for d in self.topology.devices
                         if d.role == role and not d.fleet and not d.external]
                if role == "meter":
                    group += [self._launch_fleet(name) for name in self.topology.fleets]
                self._wait_all(group)
            if self.monitor:
                self._start_monitor()
        except BaseException:
            self.stop()
            raise
        self._save()

    def _spawn(self, name: str, kind: str, argv: list[str], env: dict[str, str] | None = None,
               nofile: int = 0) -> ProcessRecord:
        record = processes.spawn(name, kind, argv, self.log_dir / f"{name}.log", env,
                                 cwd=Path(__file__).resolve().parents[2], nofile=nofile)
        self.processes.append(record)
        self._save()
        return record

    def _start_broker(self, mosquitto: str, name: str) -> None:
        self._wait_all([self._launch_broker(mosquitto, name)])

    def _connection_limits(self, name: str) -> tuple[int, int]:
        """(max_connections, open-files limit) for broker ``name``: what its clients need (see
        brokers.mosquitto.connection_budget), as far as this user's hard limit allows; a limit too
        low for the clients the topology connects to it is an error that says how to raise it."""
        broker = self.topology.broker(name)
        budget = connection_budget(self.topology, broker)
        soft, hard = processes.nofile_limits(budget + BROKER_FD_MARGIN)
        needed = expected_clients(self.topology, broker)
        if soft - BROKER_FD_MARGIN < needed:
            raise BrokerError(f"broker {name} must hold {needed} connections, but the open-files hard limit is "
                              f"{hard}: raise it (as root: `ulimit -Hn {needed + BROKER_FD_MARGIN}`, or nofile "
                              "in /etc/security/limits.conf), or start the bus as root")
        return min(budget, soft - BROKER_FD_MARGIN), soft

    def _launch_broker(self, mosquitto: str, name: str) -> _Starting:
        broker = self.topology.broker(name)
        directory = self.state_dir / "brokers" / name
        (directory / "data").mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        blocks = Blocklist.load(self.state_dir)
        dynsec = Path(DYNSEC_PLUGIN)
        # Debug logging on the control plane only: it is how Mosquitto reports denied and oversize
        # publishes, and commands are few; on the delivery plane it would cost ~10 us of broker CPU
        # and ~350 bytes of log per message (testbed/csf/README-monitor.md).
        max_connections, nofile = self._connection_limits(name)
        files = BrokerFiles(certs=self.pki.directory.resolve(), directory=directory, log=log,
                            user=getpass.getuser(), debug_log=broker.plane == "control",
                            dynsec_plugin=dynsec if dynsec.exists() else None,
                            blocked_identities=tuple(blocks.identities), blocked_topics=tuple(blocks.topics),
                            max_connections=max_connections)
        for filename, text in render_broker(self.topology, broker, files).items():
            (directory / filename).write_text(text)
        offset = log.stat().st_size if log.exists() else 0
        argv = broker_argv(mosquitto, directory / "mosquitto.conf", broker.snapshot_every_ms)  # a ticker if asked
        record = self._spawn(name, "broker", argv, nofile=nofile)
        return _Starting(record, self._log_has(log, " running", offset), f"broker {name}", 15)

    def _bridge_up(self, bridge: BridgeSpec, way: str) -> _Starting:
        """The bridge connection ``way`` is up when the broker it connects to logs its client id."""
        name = f"{bridge.name}-{way}"
        target = self.topology.bridge_endpoints(bridge, way)[1]
        return _Starting(self._record(target), self._log_has(self.log_dir / f"{target}.log", f" as {name} "),
                         f"bridge {name}", 15)

    def _start_feeder(self, feeder_id: str) -> None:
        self._wait_all([self._launch_feeder(feeder_id)])

    def _launch_feeder(self, feeder_id: str) -> _Starting:
        spec = self.topology.feeder(feeder_id)
        sock = self.run_dir / f"{feeder_id}.sock"
        sock.unlink(missing_ok=True)
        record = self._spawn(feeder_id, "feeder", [sys.executable, "-m", "devices.feeder"], {
            "FMB_FEEDER": json.dumps(asdict(spec)), "FMB_FEEDER_SOCKET": str(sock)})
        return _Starting(record, sock.exists, f"feeder {feeder_id}", 10)

    def _start_fleet(self, fleet: str) -> None:
        self._wait_all([self._launch_fleet(fleet)])

    def _launch_fleet(self, fleet: str) -> _Starting:
        """Start ``python -m devices.fleet`` for ``fleet``; ready once every meter is connected."""
        env = fleet_environment(self.topology, fleet, self.pki.directory.resolve(), self.run_dir)
        ready = Path(env["FMB_READY_FILE"])
        ready.unlink(missing_ok=True)
        record = self._spawn(fleet, "fleet", [sys.executable, "-m", "devices.fleet"], env)
        meters = len(self.topology.fleets[fleet])

        def connected() -> bool:
            state = fleet_state(ready, record.pid, 0.0)
            return state.verdict == "up" and state.connected == state.expected

        def progress() -> str:
            return f"{fleet_state(ready, record.pid, 0.0).connected or 0}/{meters} meters connected"
        # On a busy machine the handshakes take what they take: waited for while meters keep connecting.
        return _Starting(record, connected, f"fleet {fleet}", fleet_ready_timeout(meters), progress)

    def monitor_shards(self) -> dict[str, list[str] | None]:
        """The monitor processes this bus runs, name -> the sites it watches (None: every site). A bus
        of substation templates gets one per site (``monitor-<site>``), so that no monitor's work grows
        with the whole bus; a hand-written one a single ``monitor``."""
        if not self.topology.templates:
            return {"monitor": None}
        return {f"monitor-{s.name}": [s.name] for s in self.topology.sites}

    def _start_monitor(self, name: str | None = None) -> None:
        """Start the monitor processes (or the one named), in parallel, and wait until each is ready."""
        starting = []
        for shard, sites in self.monitor_shards().items():
            if name is not None and shard != name:
                continue
            env = monitor_environment(self.topology, self.pki.directory.resolve(), self.state_dir, self.log_dir,
                                      self.run_dir, sites)
            ready = Path(env["FMB_READY_FILE"])
            ready.unlink(missing_ok=True)
            record = self._spawn(shard, "monitor", [sys.executable, "-m", "testbed.csf.monitor"], env)
            starting.append(_Starting(record, ready.exists, shard, 60))
        self._wait_all(starting)

    def _start_device(self, device: DeviceSpec, restart: bool = False) -> None:
        self._wait_all([self._launch_device(device, restart)])

    def _launch_device(self, device: DeviceSpec, restart: bool = False) -> _Starting:
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
                "--state", str(self.state_dir), "--certs", str(self.pki.directory.resolve()),
                # On a topology of several substations, a tablet's button runs Appendix A on its own.
                *(["--substation", device.site] if len(self.topology.substations) > 1 else [])])
        ready = Path(env["FMB_READY_FILE"])
        ready.unlink(missing_ok=True)
        record = self._spawn(device.id, "device", [sys.executable, "-m", f"devices.{device.role}"], env)
        return _Starting(record, ready.exists, f"device {device.id}", 30)

    @staticmethod
    def _log_has(log: Path, needle: str, offset: int = 0) -> Callable[[], bool]:
        """Whether ``needle`` is in ``log`` past ``offset`` (read from where the last look ended)."""
        wanted = needle.encode()
        position, tail = offset, b""  # a needle split across two reads is still found

        def found() -> bool:
            nonlocal position, tail
            try:
                with open(log, "rb") as f:
                    f.seek(position)
                    chunk = f.read()
            except OSError:
                return False
            position += len(chunk)
            text = tail + chunk
            tail = text[-len(wanted):]
            return wanted in text
        return found

    def _wait_log(self, name: str, needle: str, what: str, offset: int = 0,
                  record: ProcessRecord | None = None, timeout_s: float = 15) -> None:
        self._wait_for(self._log_has(self.log_dir / f"{name}.log", needle, offset), record or self._record(name),
                       what, timeout_s)

    def _wait_for(self, condition: Callable[[], bool], record: ProcessRecord, what: str, timeout_s: float) -> None:
        self._wait_all([_Starting(record, condition, what, timeout_s)])

    def _wait_all(self, starting: list[_Starting]) -> None:
        """Wait until every process of ``starting`` is ready; the first that exits, or that is not
        ready within its own time-out, is an error naming it, with the end of its log."""
        pending = list(starting)
        t0 = time.monotonic()
        last: dict[int, tuple[str, float]] = {}  # id(s) -> (its progress, when it last changed)

        def fail(s: _Starting, problem: str) -> BaseException:
            error = BrokerError if s.record.kind == "broker" else DeviceError
            got = f" ({s.progress()})" if s.progress else ""
            return error(f"{s.what} {problem}{got}: {self._tail(s.record)} (log: {s.record.log})")

        def all_ready() -> bool:
            now = time.monotonic()
            for s in list(pending):
                if s.ready():
                    pending.remove(s)
                    continue
                if not processes.alive(s.record):
                    raise fail(s, "exited at start-up")
                since = t0
                if s.progress is not None:
                    value = s.progress()
                    if last.get(id(s), ("", 0.0))[0] != value:
                        last[id(s)] = (value, now)
                    since = last[id(s)][1]
                if now - since > s.timeout_s:
                    raise fail(s, f"not ready after {now - t0:.0f} s" + (", no progress for "
                                                                          f"{s.timeout_s:g} s" if s.progress else ""))
            return not pending

        # The deadlines are each process's own (above); this one only bounds a process that keeps progressing.
        longest = max((s.timeout_s for s in starting), default=0.0)
        wait_until(all_ready, 10 * longest + 1, interval_s=0.02, what=lambda: f"{pending[0].what} not ready")

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
        if record.kind == "fleet":
            state = self.fleet_state(name)
            return state.verdict, state.why
        if record.kind not in ("device", "monitor"):
            return "up", ""
        health = read_health(self.run_dir / f"{name}.ready", pid=record.pid)
        return ("up", "") if health.healthy else ("unhealthy", health.why)

    def fleet_state(self, name: str) -> FleetState:
        """Meters connected of those expected in fleet ``name``, and the verdict (testbed.backends.fleets)."""
        record = self._record(name)
        return fleet_state(self.run_dir / f"{name}.ready", record.pid, processes.age_s(record))

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
            self._start_monitor(name)
        elif record.kind == "fleet":
            self._start_fleet(name)
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
        """Stop devices and fleets, feeders, then brokers (so the data-centre brokers save last)."""
        order = {"monitor": 0, "device": 1, "fleet": 1, "feeder": 2, "broker": 3}
        for step in sorted(set(order.values())):
            processes.stop([p for p in self.processes if order.get(p.kind, 1) == step], timeout_s)
        self.processes = []
        self.state_file.unlink(missing_ok=True)
