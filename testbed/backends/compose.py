"""The docker backend: the Compose bus of a topology, driven from this host.

The bus is ``compose/docker-compose.yml`` for the default (Appendix A) topology, and for any other
the file :func:`~testbed.backends.composefile.render_compose` generates from it (``fmb compose``),
written to a private temporary folder for the life of the bus (:func:`compose_file_for`).

:class:`ComposeProject` brings one Compose project up and down (``docker compose`` v2 when
installed, else ``docker-compose`` v1) and finds its containers, networks and volumes with
the Docker SDK by the project's labels. :class:`DockerBus` is that bus as the scenario
runner sees it (``topology``, ``identity``, ``endpoint``, ``ui_socket``): the harness runs
on this host and reaches the brokers on the ports they publish on 127.0.0.1 only, with the
``recorder`` and ``operator`` identities copied out of the harness's volume into a private
temporary folder (a device's, for a scenario that publishes with a stolen credential, out of that
device's volume); the tablet's operator input is relayed by a process run in the tablet's own
container (:meth:`DockerBus.operator_request`), so no step needs root on this host. For Respond and
Recover it runs CA operations in a one-shot container made as ``init``'s (the only one that mounts
the CA's volume), SIGHUPs the broker containers, restarts services, and backs up and restores the
``pki`` and persistence volumes. Timestamps stay comparable because containers share this host's clock.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from testbed.backends.composefile import image_variable, is_default, port_variable, render_compose
from testbed.backends.containers import ALERTS_FILE, CA_ACTIONS, RESPONDER, RUNNER_IDENTITIES, fleet_volume
from testbed.core.errors import TestbedError
from testbed.core.topology import Topology, load_topology
from testbed.core.waiting import wait_until
from testbed.security.pki import PKI
from testbed.transport.mqtt import Endpoint, TLSIdentity

__all__ = ["COMPOSE_FILE", "ComposeProject", "DockerBus", "compose_bus", "compose_file_for", "device_image",
           "image_variable", "port_variable", "restore_compose", "restore_volumes"]

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "compose" / "docker-compose.yml"
DEFAULT_PROJECT = "fmb"
HARNESS_SERVICE = "scenario"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


def device_image() -> str:
    """The image of the Python containers: ``$FMB_DEVICE_IMAGE``, as the Compose file reads it, else
    fmb-device:latest."""
    return os.environ.get("FMB_DEVICE_IMAGE") or "fmb-device:latest"


def docker_client() -> Any:
    """A Docker SDK client, or a one-line error saying what is missing."""
    try:
        import docker  # the Docker SDK (~0.2 s) only where a Compose bus is driven, and a clear error if missing
    except ImportError:
        raise TestbedError("the docker backend needs the Python `docker` package: "
                           "pip install docker") from None
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:  # the SDK raises several kinds for "no engine"
        raise TestbedError(f"cannot reach the Docker engine ({e}); is it running, and may you "
                           "use it (group docker)?") from None
    return client


COMPOSE_VERSIONS = ("v1", "v2")


def compose_command(version: str | None = None) -> list[str]:
    """``docker compose`` (v2) if installed, else ``docker-compose`` (v1).

    ``version`` (else ``$FMB_COMPOSE``), ``v1`` or ``v2``, insists on that one: the tests run
    the bus under both, and a user with both installed can pick."""
    version = version or os.environ.get("FMB_COMPOSE") or None
    if version is not None and version not in COMPOSE_VERSIONS:
        raise TestbedError(f"Compose version {version!r} (FMB_COMPOSE): use v1 (docker-compose) or v2 (docker compose)")
    if version != "v1" and shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if version != "v2" and shutil.which("docker-compose"):
        return ["docker-compose"]
    if version == "v2":
        raise TestbedError("`docker compose` (Compose v2) is not installed: run scripts/setup, or install "
                           "Docker's docker-compose-plugin")
    if version == "v1":
        raise TestbedError("`docker-compose` (Compose v1) is not installed: apt-get install docker-compose")
    raise TestbedError("neither `docker compose` nor `docker-compose` is installed")


class ComposeProject:
    """One project of the Compose file; a context manager that removes it all on exit."""

    def __init__(self, name: str = DEFAULT_PROJECT, compose_file: Path = COMPOSE_FILE,
                 ports: dict[str, int] | None = None, ui_port: int | None = None,
                 compose_version: str | None = None, images: dict[str, str] | None = None,
                 variables: dict[str, str] | None = None) -> None:
        if not name or not all(c.isalnum() or c in "-_" for c in name) or name != name.lower():
            raise TestbedError(f"Compose project name {name!r}: use lower-case letters, digits, "
                               "- and _")
        self.name = name
        self.compose_file = compose_file
        self.ports = ports or {}
        self.images = images or {}  # broker -> image (the Compose file's default: fmb-broker:latest)
        self.ui_port = ui_port  # the tablet console's host port (FMB_UI_PORT; the Compose file's default otherwise)
        self.variables = variables or {}  # any other Compose variable (another tablet's FMB_<TABLET>_UI_PORT)
        self.client = docker_client()
        self._compose = compose_command(compose_version)  # None: v2 if installed, else v1

    def __enter__(self) -> ComposeProject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def compose(self, *args: str, check: bool = True, timeout_s: float = 300) -> str:
        """Run one compose command on this project; its standard output."""
        env = {**os.environ, **{port_variable(b): str(p) for b, p in self.ports.items()},
               **{image_variable(b): i for b, i in self.images.items()}}
        if self.ui_port is not None:
            env["FMB_UI_PORT"] = str(self.ui_port)
        env.update(self.variables)
        argv = [*self._compose, "-p", self.name, "-f", str(self.compose_file), *args]
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise TestbedError(f"`{' '.join(argv)}` took more than {timeout_s:g} s") from None
        if check and done.returncode != 0:
            out = (done.stdout + done.stderr).splitlines()
            tail = " | ".join(ln for ln in out[-5:] if ln.strip())
            raise TestbedError(f"`{' '.join(argv[len(self._compose):])}` failed: {tail}")
        return done.stdout

    def up(self, services: list[str] | None = None, timeout_s: float = 60) -> None:
        """Start the services (all of them by default) and those they depend on, detached.

        Returns once each started service is running, and healthy where it has a health
        check (compose waits only for the dependencies it declares)."""
        self.compose("up", "-d", *(services or []), timeout_s=max(300, timeout_s))
        self.wait_healthy(services, timeout_s)

    def wait_healthy(self, services: list[str] | None = None, timeout_s: float = 60) -> None:
        pending: list[str] = []

        def healthy() -> bool:
            pending.clear()
            for c in self.containers():
                service = c.labels.get(SERVICE_LABEL)
                if services is not None and service not in services:
                    continue
                state = c.attrs["State"]
                health = state.get("Health", {}).get("Status")
                if state["Status"] == "exited" and state["ExitCode"] == 0:
                    continue  # a one-shot service that did its job
                if state["Status"] != "running" or health not in (None, "healthy"):
                    pending.append(f"{service} ({health or state['Status']})")
            return not pending

        wait_until(healthy, timeout_s, interval_s=0.5,
                   what=lambda: f"not healthy after {timeout_s:g} s: {', '.join(pending)}; "
                                "see `docker logs` of those containers")

    def down(self) -> None:
        """Remove the project's containers, networks and volumes (the PKI too)."""
        self.compose("down", "-v", "--remove-orphans", "-t", "5", check=False)

    def containers(self, all: bool = True) -> list[Any]:
        label = {"label": f"{PROJECT_LABEL}={self.name}"}
        return list(self.client.containers.list(all=all, filters=label))

    def container(self, service: str) -> Any:
        """The container of ``service`` (a broker name, a device id, ``scenario``...)."""
        found = self.client.containers.list(all=True, filters={"label": [
            f"{PROJECT_LABEL}={self.name}", f"{SERVICE_LABEL}={service}"]})
        if not found:
            raise TestbedError(f"no container of service {service!r} in Compose project "
                               f"{self.name!r}; is it up (docker compose ps)?")
        return found[0]

    def network(self, name: str) -> Any:
        return self.client.networks.get(f"{self.name}_{name}")

    def volume(self, name: str) -> Any:
        return self.client.volumes.get(f"{self.name}_{name}")

    def leftovers(self) -> list[str]:
        """Containers, networks and volumes of this project that still exist."""
        label = {"label": f"{PROJECT_LABEL}={self.name}"}
        containers = self.client.containers.list(all=True, filters=label)
        return ([f"container {c.name}" for c in containers]
                + [f"network {n.name}" for n in self.client.networks.list(filters=label)]
                + [f"volume {v.name}" for v in self.client.volumes.list(filters=label)])

    def wait_exit(self, service: str, timeout_s: float = 120) -> int:
        """Wait until ``service``'s container has exited; its exit code."""
        result = self.container(service).wait(timeout=timeout_s)
        return int(result["StatusCode"])


class DockerBus:
    """The Compose bus seen from this host: what :class:`~testbed.harness.runner.ScenarioRunner` needs."""

    def __init__(self, project: ComposeProject, topology: Topology | None = None) -> None:
        self.project = project
        base = topology or load_topology()
        self.container_topology = base  # ports inside the Compose networks, as the brokers listen
        published = {b.name: self._published(b.name, b.port) for b in base.brokers}
        self.topology = base.with_ports({
            s.name: (published[f"{s.name}-delivery"], published[f"{s.name}-control"])
            for s in base.sites})
        self._certs = Path(tempfile.mkdtemp(prefix="fmb-harness-"))  # 0700
        self._copy_harness_identities()
        self.pki = PKI(self._certs)  # the runner finds the operator's signing key beside it

    def close(self) -> None:
        shutil.rmtree(self._certs, ignore_errors=True)

    def _published(self, broker: str, port: int) -> int:
        bindings = (self.project.container(broker).attrs["NetworkSettings"]["Ports"] or {}).get(
            f"{port}/tcp") or []
        for b in bindings:
            if b.get("HostIp") in ("127.0.0.1", "::1"):
                return int(b["HostPort"])
        raise TestbedError(f"broker {broker} publishes no port on 127.0.0.1 (is it running?)")

    def borrow_identity(self, device_id: str) -> TLSIdentity:
        """A device's own certificate and key, copied out of its volume beside the harness's.

        For benchmarks that must publish what only that device may (a profile that crosses a
        bridge, under the device's ACL); the copy goes when the bus is closed."""
        device = next((d for d in self.topology.devices if d.id == device_id), None)
        if device is None:
            raise TestbedError(f"no device {device_id!r} in the topology")
        # A fleet's meters share the fleet's volume.
        self._copy_volume(fleet_volume(device.fleet) if device.fleet else f"certs-{device_id}")
        return self.identity(device_id)

    def _copy_harness_identities(self) -> None:
        self._copy_volume("certs-harness")

    def _copy_volume(self, name: str) -> None:
        """Copy a certificate volume out through a container that never runs."""
        volume = self.project.volume(name).name
        box = self.project.client.containers.create(
            device_image(), ["true"], network_mode="none",
            volumes={volume: {"bind": "/certs", "mode": "ro"}})
        try:
            stream, _ = box.get_archive("/certs/.")
            data = b"".join(stream)
        finally:
            box.remove(force=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                source = tar.extractfile(member) if member.isfile() else None
                if source is None:
                    continue
                target = self._certs / Path(member.name).relative_to(".")
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(target, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(source.read())

    def identity(self, name: str) -> TLSIdentity:
        """The harness's own identities; a device's (a scenario that publishes as one: an attack with
        a stolen credential) copied out of that device's volume; ``responder`` out of its volume."""
        paths = TLSIdentity(self._certs / "ca" / "ca.pem", self._certs / "clients" / f"{name}.pem",
                            self._certs / "clients" / f"{name}.key")
        if not paths.cert.exists() and name in (RESPONDER, "bench"):
            self._copy_volume(f"certs-{RESPONDER}")
        elif not paths.cert.exists() and any(d.id == name for d in self.topology.devices):
            return self.borrow_identity(name)
        if not paths.cert.exists():
            raise TestbedError(f"the Compose bus holds no identity {name!r} the harness may copy: the harness's own "
                               f"({', '.join(RUNNER_IDENTITIES)}), a device's, {RESPONDER} or bench")
        return paths

    # -- the CA and the brokers, for Respond and Recover (testbed.csf) ---------------------------

    def ca(self, action: str, *names: str) -> list[str]:
        """A CA operation (``revoke|issue|reissue|rotate|block|unblock NAME...``) in a one-shot container
        of the ``init`` service, the only one that mounts the CA's volume; it re-fills every volume
        (CRL, certificates, ACLs). The harness's copies are refreshed; returns what it did."""
        if action not in CA_ACTIONS:
            raise TestbedError(f"CA action {action!r}: use one of {', '.join(CA_ACTIONS)}")
        out = self._run_like_init(["python", "-m", "testbed.cli.containers", "ca", action, *names])
        self._copy_harness_identities()
        if (self._certs / "clients" / f"{RESPONDER}.pem").exists() or action == "issue":
            self._copy_volume(f"certs-{RESPONDER}")  # an issued identity lands there (and the new CRL)
        return [line[4:] for line in out.splitlines() if line.startswith("ca: ")]

    def _run_like_init(self, command: list[str], timeout_s: float = 120) -> str:
        """Run ``command`` in a one-shot container made as the ``init`` service's (its image, volumes, user,
        capabilities and hardening, no network), straight through the engine: what ``docker compose run
        --rm --no-deps init ...`` does, without the seconds the Compose client costs on a busy machine,
        which would otherwise dominate a response time. Its output; a one-line error if it fails."""
        init = self.project.container("init")
        config, host = init.attrs["Config"], init.attrs["HostConfig"]
        volumes = {m["Name"] if m["Type"] == "volume" else m["Source"]:
                   {"bind": m["Destination"], "mode": "rw" if m["RW"] else "ro"} for m in init.attrs["Mounts"]}
        box = self.project.client.containers.create(
            config["Image"], command, user=config.get("User") or "0:0", environment=config.get("Env") or [],
            volumes=volumes, network_mode="none", read_only=True, init=True, cap_drop=["ALL"],
            cap_add=host.get("CapAdd") or [], security_opt=host.get("SecurityOpt") or [],
            labels={PROJECT_LABEL: self.project.name, "org.fmb.one-shot": "ca"})
        try:
            box.start()
            code = int(box.wait(timeout=timeout_s)["StatusCode"])
            text = bytes(box.logs(stdout=True, stderr=True)).decode("utf-8", "replace")
        finally:
            box.remove(force=True)
        if code != 0:
            tail = " | ".join(ln for ln in text.splitlines()[-3:] if ln.strip())
            raise TestbedError(f"`{' '.join(command[3:])}` in a one-shot container of init failed ({code}): {tail}")
        return text

    def revoke_certificate(self, name: str) -> int:
        """Revoke ``name`` in the CA's volume and hand every container the new CRL; its serial."""
        for line in self.ca("revoke", name):
            if line.startswith(f"revoked {name} serial "):
                return int(line.rsplit(" ", 1)[1], 16)
        raise TestbedError(f"the CA operation did not say it revoked {name}")

    def brokers(self) -> list[Any]:
        """The running broker containers."""
        names = {b.name for b in self.topology.brokers}
        return [c for c in self.project.containers(all=False) if c.labels.get(SERVICE_LABEL) in names]

    def reload_brokers(self, timeout_s: float = 10) -> int:
        """SIGHUP every running broker container (Mosquitto re-reads certificates, CRL and ACL) and wait
        until each has logged the reload; returns how many. The signal goes to the container's init,
        which forwards it to Mosquitto."""
        since = time.time() - 0.5  # the engine's log timestamps and this clock are the same host clock
        brokers = self.brokers()
        for c in brokers:
            c.kill(signal="SIGHUP")
        waiting = {c.name: c for c in brokers}

        def reloaded() -> bool:
            for name, c in list(waiting.items()):
                if b"Reloading config" in c.logs(since=since, stdout=True, stderr=True):
                    del waiting[name]
            return not waiting

        wait_until(reloaded, timeout_s, interval_s=0.05,
                   what=lambda: f"broker containers {', '.join(sorted(waiting))} did not reload in {timeout_s:g} s")
        return len(brokers)

    def service_of(self, identity: str) -> str | None:
        """The service that holds ``identity``'s certificate: a device's own, a fleet's for its meters, a
        broker's; None for an identity no service holds (the harness's)."""
        if identity in {b.name for b in self.topology.brokers} or identity == "monitor":
            return identity
        device = next((d for d in self.topology.devices if d.id == identity), None)
        if device is None:
            return None
        return device.fleet or device.id

    def recover(self, timeout_s: float = 180) -> list[str]:
        """Start every service that is not running or not healthy (``docker compose up -d`` of them; the
        restart policy has already had its go) and wait until all are healthy; the services restarted."""
        wanted = [s for s in self.project.compose("config", "--services").split() if s not in (HARNESS_SERVICE, "init")]
        down = []
        for service in wanted:
            try:
                state = self.project.container(service).attrs["State"]
            except TestbedError:
                down.append(service)
                continue
            if state["Status"] != "running" or state.get("Health", {}).get("Status") == "unhealthy":
                down.append(service)
        if down:
            # --no-deps: what they depend on and is down is in `down` too (devices reconnect with backoff),
            # and init, a one-shot whose volumes are filled, need not run again (minutes on a busy machine).
            self.project.compose("up", "-d", "--no-deps", *down, timeout_s=max(300, timeout_s))
        self.project.wait_healthy(wanted, timeout_s)
        return down

    def backup(self, archive: Path) -> list[str]:
        """Archive the PKI (volume ``pki``) and the persistent brokers' databases (``data-<broker>``) into
        ``archive`` (mode 0600: it holds keys), in the layout of the local bus's ``fmb backup`` (``certs/``,
        ``brokers/<name>/data/``), so either backend restores it. The brokers save first (SIGUSR1)."""
        persistent = [b.name for b in self.container_topology.brokers if b.persistent]
        for c in self.brokers():
            if c.labels.get(SERVICE_LABEL) in persistent:
                c.kill(signal="SIGUSR1")
        time.sleep(0.5)  # Mosquitto writes the database from its main loop
        mounts = {"pki": "certs", **{f"data-{b}": f"brokers/{b}/data" for b in persistent}}
        data = self._read_volumes(mounts)
        members = []
        archive.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(archive, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as out, \
                tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                name = member.name.removeprefix("backup/")
                source = tar.extractfile(member) if member.isfile() else None
                if source is None or name.endswith(".new") or name.rsplit("/", 1)[-1].startswith("."):
                    continue
                member.name, member.uid, member.gid, member.uname, member.gname = name, 0, 0, "", ""
                out.addfile(member, source)
                members.append(name)
        return members

    def _read_volumes(self, mounts: dict[str, str]) -> bytes:
        """A tar of the named volumes of this project, each under ``backup/<path>``, read through a
        container that never runs."""
        volumes = {self.project.volume(v).name: {"bind": f"/backup/{path}", "mode": "ro"} for v, path in mounts.items()}
        box = self.project.client.containers.create(device_image(), ["true"], network_mode="none", volumes=volumes)
        try:
            stream, _ = box.get_archive("/backup")
            return b"".join(stream)
        finally:
            box.remove(force=True)

    def alerts_text(self) -> str:
        """The monitor service's alert file (JSON lines; on its tmpfs, which `docker cp` cannot read)."""
        code, out = self.project.container("monitor").exec_run(["cat", str(ALERTS_FILE)])
        if code != 0:
            return ""  # no alert yet: the file is created with the first
        return bytes(out).decode("utf-8", "replace")

    def restart(self, service: str) -> None:
        """Restart one service (a device takes its new certificate) and wait until it is healthy."""
        self.project.compose("restart", "-t", "5", service)
        self.project.wait_healthy([service], timeout_s=120)

    def endpoint(self, broker: str) -> Endpoint:
        return Endpoint("127.0.0.1", self.topology.broker(broker).port)

    def operator_request(self, device_id: str, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """The operator's input to a tablet (what its screen's buttons send), relayed by a process in the
        tablet's own container to its socket there: the harness needs the Docker engine, as for
        everything on this bus, but not root (the socket's volume is root's to open from the host). The
        tablet stamps the command's publish time itself, so the relay's cost stays out of the figures."""
        argv = ["python", "-m", "testbed.cli.containers", "operator", device_id, json.dumps(request),
                f"{timeout_s:g}"]
        code, out = self.project.container(device_id).exec_run(argv, user="10001:10001")
        lines = bytes(out).decode("utf-8", "replace").strip().splitlines()
        if code != 0 or not lines:
            raise OSError(f"the relay in {device_id}'s container failed ({code}): {' | '.join(lines[-2:])}")
        reply: dict[str, Any] = json.loads(lines[-1])
        return reply

    def ui_socket(self, device_id: str) -> Path:
        mountpoint = Path(self.project.volume("ui").attrs["Mountpoint"])
        path = mountpoint / f"{device_id}.sock"
        if not os.access(mountpoint, os.X_OK):
            raise TestbedError(f"cannot reach {path}: the tablet's operator input is a socket on "
                               "a Docker volume, which only root can open from the host; run as "
                               "root, or run the scenario inside the bus (the `scenario` service)")
        return path


def restore_volumes(project: ComposeProject, topology: Topology, archive: Path) -> list[str]:
    """Bring back an ``fmb backup`` archive (either backend's) into the project's ``pki`` and
    ``data-<broker>`` volumes, with the project's containers stopped (created, volumes too, if the
    project was down); ``up`` afterwards re-fills every container's volume from the restored PKI."""
    persistent = {b.name for b in topology.brokers if b.persistent}
    try:
        tar = tarfile.open(archive, "r:gz")  # noqa: SIM115 - closed by the `with tar` below
    except (OSError, tarfile.TarError) as e:
        raise TestbedError(f"{archive} is not a backup made by `fmb backup` ({e})") from None
    staged = io.BytesIO()
    restored: list[str] = []
    made: set[str] = set()
    with tar, tarfile.open(fileobj=staged, mode="w") as out:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            ok = member.isfile() and ".." not in parts and len(parts) >= 2 and (
                parts[0] == "certs" or (parts[0] == "brokers" and len(parts) >= 4 and parts[1] in persistent
                                        and parts[2] == "data"))
            if not ok:
                raise TestbedError(f"{archive} holds an unexpected entry {member.name!r} for topology {topology.name}; "
                                   "refusing to restore it")
            target = ("pki/" + "/".join(parts[1:]) if parts[0] == "certs"
                      else f"data-{parts[1]}/" + "/".join(parts[3:]))
            source = tar.extractfile(member)
            assert source is not None
            for parent in reversed(Path(target).parents[:-1]):  # uid 10001's, as init and the brokers need
                if str(parent) not in made:
                    made.add(str(parent))
                    folder = tarfile.TarInfo(str(parent))
                    folder.type, folder.mode, folder.uid, folder.gid = tarfile.DIRTYPE, 0o700, 10001, 10001
                    out.addfile(folder)
            info = tarfile.TarInfo(target)
            info.size, info.uid, info.gid = member.size, 10001, 10001
            info.mode = 0o600 if target.endswith((".key", ".db")) or "/signing/" in target else 0o644
            out.addfile(info, source)
            restored.append(member.name)
    project.compose("up", "--no-start")  # the volumes, if the project was down
    project.compose("stop", "-t", "5")
    volumes = {project.volume(v).name: {"bind": f"/restore/{v}", "mode": "rw"}
               for v in ["pki", *(f"data-{b}" for b in sorted(persistent))]}
    box = project.client.containers.create(device_image(), ["true"], network_mode="none", volumes=volumes)
    try:
        if not box.put_archive("/restore", staged.getvalue()):
            raise TestbedError(f"the Docker engine refused to write {archive} into the volumes")
    finally:
        box.remove(force=True)
    return restored


def restore_compose(archive: Path, topology_path: str | None = None, project_name: str | None = None) -> list[str]:
    """``fmb restore --backend docker``: the archive into the project's volumes, then the bus up again
    (without ``scenario``), healthy."""
    topology = load_topology(topology_path) if topology_path else load_topology()
    name = project_name or os.environ.get("COMPOSE_PROJECT_NAME") or DEFAULT_PROJECT
    with compose_file_for(topology) as compose_file:
        project = ComposeProject(name, compose_file, images={b.name: b.image for b in topology.brokers})
        restored = restore_volumes(project, topology, archive)
        services = [s for s in project.compose("config", "--services").split() if s != HARNESS_SERVICE]
        project.up(services, timeout_s=240)
    return restored


def _project_running(project: ComposeProject) -> bool:
    return any(c.status == "running" and c.labels.get(SERVICE_LABEL) != HARNESS_SERVICE
               for c in project.containers())


@contextmanager
def compose_file_for(topology: Topology) -> Iterator[Path]:
    """The Compose file of ``topology``: the checked-in one for the default topology, else the
    generated one in a private temporary folder, removed on exit (the topology is mounted into
    the containers from where it is)."""
    if is_default(topology):
        yield COMPOSE_FILE
        return
    folder = Path(tempfile.mkdtemp(prefix="fmb-compose-"))  # 0700
    try:
        path = folder / "docker-compose.yml"
        path.write_text(render_compose(topology, str(Path(topology.path).resolve())))
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def compose_bus(project_name: str | None = None, topology_path: str | None = None,
                up_timeout_s: float = 120, start: bool = True) -> Iterator[DockerBus]:
    """The Compose bus of ``project_name`` (default ``$COMPOSE_PROJECT_NAME`` or ``fmb``) for the
    topology of ``topology_path`` (default Appendix A).

    When it is not up, this starts it without the ``scenario`` service (the caller is the
    harness) and removes it, volumes included, afterwards; with ``start=False`` (the commands that
    act on a running bus: respond, certs, monitor) it says so in one line instead."""
    topology = load_topology(topology_path) if topology_path else load_topology()
    with compose_file_for(topology) as compose_file, _compose_bus(project_name, topology, compose_file,
                                                                  up_timeout_s, start) as bus:
        yield bus


@contextmanager
def _compose_bus(project_name: str | None, topology: Topology, compose_file: Path,
                 up_timeout_s: float, start: bool = True) -> Iterator[DockerBus]:
    name = project_name or os.environ.get("COMPOSE_PROJECT_NAME") or DEFAULT_PROJECT
    # Each broker in the image of the Mosquitto build its topology asks for (`mosquitto`).
    project = ComposeProject(name, compose_file, images={b.name: b.image for b in topology.brokers})
    for broker, image in project.images.items():  # fmb-broker-2.1 is built only when asked for
        try:
            project.client.images.get(image)
        except Exception:
            raise TestbedError(f"broker {broker} runs image {image}, which is not built: run scripts/images "
                               "--broker all") from None
    started = False
    if not start and not _project_running(project):
        raise TestbedError(f"no Compose bus running in project {name}: start it (`docker compose -p {name} -f "
                           f"{compose_file} up -d`), or set COMPOSE_PROJECT_NAME to the running one")
    if not _project_running(project):
        services = [s for s in project.compose("config", "--services").split()
                    if s != HARNESS_SERVICE]
        print(f"starting the Compose bus (project {name}): {len(services)} services ...",
              flush=True)
        started = True
        try:
            project.up(services, timeout_s=up_timeout_s)
        except BaseException:
            project.down()
            raise
    bus = None
    try:
        bus = DockerBus(project, topology)
        yield bus
    finally:
        if bus is not None:
            bus.close()
        if started:
            project.down()
            print(f"removed the Compose bus started for this run (project {name})", flush=True)
