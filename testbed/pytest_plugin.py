"""The ``fmb`` pytest plugin: scenario regressions on a running bus, in anyone's CI.

Installed with the package (entry point ``pytest11``: ``fmb``), so every pytest run of that
environment has it; it costs nothing until a test asks for one of its fixtures, and
``-p no:fmb`` turns it off. A test asks for ``fmb_run`` and gets the result of a scenario run
on a bus that the session starts once::

    from testbed.pytest_plugin import assert_scenario_passed

    def test_appendix_a(fmb_run):
        result = fmb_run("appendix-a", repeat=3)
        assert_scenario_passed(result)  # else: the reason, the timeline table, the result files

Options, each from the command line, else the environment, else the ini file (a relative path
in the ini is relative to the ini's folder):

- ``--fmb-backend local|docker`` (``$FMB_BACKEND``, ini ``fmb_backend``): ``local`` (the
  default) runs the brokers and devices as processes; ``docker`` runs the Compose bus.
- ``--fmb-topology NAME|PATH`` (``$FMB_TOPOLOGY``, ini ``fmb_topology``): a topology name
  under ``brokers/topologies/`` or a .toml file; default Appendix A.
- ``--fmb-runs DIR`` (``$FMB_RUNS``, ini ``fmb_runs``): keep each run's result files in
  ``DIR/<test id>/<scenario>/``; default the test's ``tmp_path``.
- ``--fmb-substation NAME`` (``$FMB_SUBSTATION``, ini ``fmb_substation``): run scenarios on one
  substation of a large topology (``fmb run --substation``); ``fmb_run(..., substation=NAME)``
  chooses per run.

Fixtures: ``fmb_topology``, ``fmb_pki``, ``fmb_bus`` (session), ``fmb_bus_factory`` (another
bus, e.g. for a module: override ``fmb_bus`` in that module and ``fmb_run`` uses it) and
``fmb_run`` (per test). A missing prerequisite (Mosquitto; a Docker engine, Compose, the
images) skips the test with what to install, but fails it when the environment variable ``CI``
is set: a green CI run must mean the scenarios ran. The docker backend starts its own Compose
project on free loopback ports and removes it, volumes included, when the session ends; it runs
the bus of ``compose/docker-compose.yml`` (Appendix A), so ``--fmb-topology`` must describe that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

if TYPE_CHECKING:
    from testbed.core.results import ScenarioResultDoc, ScenarioStep
    from testbed.core.scenario import Scenario
    from testbed.core.topology import Topology
    from testbed.security.pki import PKI

__all__ = ["BACKENDS", "FmbSettings", "ScenarioResult", "assert_scenario_passed", "require", "settings"]

BACKENDS = ("local", "docker")
IMAGES = ("fmb-broker", "fmb-device")
RESULT_FILES = "result.json, messages.jsonl, timeline.png, summary.txt"
_TOPOLOGIES = Path(__file__).resolve().parent.parent / "brokers" / "topologies"  # as testbed.core.topology has it


# -- options ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FmbSettings:
    """The plugin's options, resolved: command line, else environment, else ini, else default."""

    backend: str = "local"
    topology: Path | None = None  # None: the Appendix A topology
    runs: Path | None = None  # None: each test's tmp_path
    substation: str | None = None  # None: the scenario's roles are played by every device of the topology


_SETTINGS = pytest.StashKey[FmbSettings]()
_OPTIONS = {  # name: (environment variable, help)
    "backend": ("FMB_BACKEND", "where the bus runs: local (brokers and devices as processes; the default) "
                               "or docker (the Compose bus)"),
    "topology": ("FMB_TOPOLOGY", "the topology: a name under brokers/topologies/ or a .toml file "
                                 "(default: Appendix A)"),
    "runs": ("FMB_RUNS", "keep each scenario run's result files under DIR/<test id>/ (default: the test's "
                         "tmp_path)"),
    "substation": ("FMB_SUBSTATION", "run scenarios on this substation of a large topology (its tablet, supply, "
                                     "cap bank and regulating meter; default: every device)"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fmb", "field message bus scenarios (testbed.pytest_plugin)")
    for name, (env, text) in _OPTIONS.items():
        metavar = {"backend": "|".join(BACKENDS), "topology": "NAME|PATH", "substation": "NAME"}.get(name, "DIR")
        group.addoption(f"--fmb-{name}", dest=f"fmb_{name}", metavar=metavar, default=None,
                        help=f"{text}; also ${env} or the ini option fmb_{name}")
        parser.addini(f"fmb_{name}", f"default of --fmb-{name}", default="")


def _raw(config: pytest.Config, name: str) -> tuple[str, Path] | None:
    """An option's value and the folder a relative path in it is relative to, or None if unset."""
    value = config.getoption(f"fmb_{name}")
    if value:
        return str(value), config.invocation_params.dir
    env = os.environ.get(_OPTIONS[name][0])
    if env:
        return env, config.invocation_params.dir
    ini = config.getini(f"fmb_{name}")
    if ini:
        return str(ini), config.inipath.parent if config.inipath else config.rootpath
    return None


def _is_path(value: str) -> bool:
    return value.endswith(".toml") or "/" in value or os.sep in value


def _settings_from(config: pytest.Config) -> FmbSettings:
    backend = _raw(config, "backend")
    if backend is not None and backend[0] not in BACKENDS:
        raise pytest.UsageError(f"--fmb-backend (or $FMB_BACKEND, ini fmb_backend) is {backend[0]!r}: "
                                f"use {' or '.join(BACKENDS)}")
    topology = _raw(config, "topology")
    topology_path = None
    if topology is not None:
        value, base = topology
        # A name is a topology shipped with the testbed; a missing file is reported when a test uses it.
        topology_path = base / value if _is_path(value) else _TOPOLOGIES / f"{value}.toml"
    runs = _raw(config, "runs")
    substation = _raw(config, "substation")
    return FmbSettings(backend=backend[0] if backend else "local", topology=topology_path,
                       runs=(runs[1] / runs[0]).resolve() if runs else None,
                       substation=substation[0] if substation else None)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Check the options before the session starts: a mistake is a usage error, not a test failure."""
    if not (config.option.help or config.option.version):
        config.stash[_SETTINGS] = _settings_from(config)


def settings(config: pytest.Config) -> FmbSettings:
    """The plugin's options for this run (checked once, when the run starts)."""
    if _SETTINGS not in config.stash:
        config.stash[_SETTINGS] = _settings_from(config)
    return config.stash[_SETTINGS]


# -- prerequisites ---------------------------------------------------------------------------


def require(condition: bool, reason: str) -> None:
    """Skip the test for ``reason`` unless ``CI`` is set, where a missing prerequisite fails."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


def docker_problem() -> str | None:
    """Why the docker backend cannot run here (what to install or start), or None."""
    # Not at the top: loading the plugin imports no module of ours (tests/test_pytest_plugin.py).
    from testbed.core.errors import TestbedError

    if shutil.which("docker") is None:
        return "docker is not installed (https://docs.docker.com/engine/install/, with the Compose plugin)"
    try:
        # Not at the top: loading the plugin imports no module of ours (tests/test_pytest_plugin.py).
        from testbed.backends.compose import compose_command, docker_client

        client = docker_client()
        compose_command()
    except TestbedError as e:
        return str(e)
    from testbed.backends.compose import device_image

    missing = []
    for image in IMAGES:
        try:
            client.images.get(device_image() if image == "fmb-device" else f"{image}:latest")
        except Exception:  # docker.errors.ImageNotFound, or the engine went away
            missing.append(image)
    if missing:
        return (f"the images {', '.join(missing)} are not built: run scripts/images in a clone of the "
                "testbed (it needs no registry)")
    return None


# -- buses -----------------------------------------------------------------------------------


def _load_topology(options: FmbSettings, topology: Topology | str | Path | None = None) -> Topology:
    # Not at the top: loading the plugin imports no module of ours (tests/test_pytest_plugin.py).
    from testbed.core.topology import Topology, load_topology

    if isinstance(topology, Topology):
        return topology
    if topology is None:
        return load_topology(options.topology)
    value = str(topology)
    return load_topology(value if _is_path(value) else _TOPOLOGIES / f"{value}.toml")


_SOCKET_PATH_MAX = 107  # sun_path of a Unix socket (108 bytes on Linux, NUL included)


@contextlib.contextmanager
def _local_bus(topology: Topology, pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # Not at the top: loading the plugin imports no module of ours (tests/test_pytest_plugin.py).
    from brokers.mosquitto import mosquitto_binary
    from testbed.backends.local import LocalBus
    from testbed.core.errors import BrokerError

    try:
        mosquitto_binary()
    except BrokerError as e:
        require(False, f"the fmb local backend needs Mosquitto: {e}")
    state_dir, short = tmp_path_factory.mktemp("fmb-state"), None
    longest = max(len(x) for x in [*(d.id for d in topology.devices), *(f.id for f in topology.feeders)])
    if len(str(state_dir.resolve() / "run" / ("x" * longest + ".sock"))) > _SOCKET_PATH_MAX:
        # The devices' and feeders' Unix sockets live in the state folder: a deep tmp_path cannot hold them.
        state_dir = short = Path(tempfile.mkdtemp(prefix="fmb-state-"))
    bus = LocalBus(topology, pki, state_dir)
    bus.start()  # if it fails, the folder stays: the error names a log in it
    try:
        yield bus
    finally:
        bus.stop()
        if short is not None:
            shutil.rmtree(short, ignore_errors=True)


@contextlib.contextmanager
def _docker_bus(topology: Topology) -> Iterator[Any]:
    """A Compose project of its own, publishing the brokers on ``topology``'s ports, removed after."""
    problem = docker_problem()
    require(problem is None, f"the fmb docker backend cannot run here: {problem}")
    # Not at the top: loading the plugin imports no module of ours (tests/test_pytest_plugin.py).
    from testbed.backends.compose import HARNESS_SERVICE, ComposeProject, DockerBus, compose_file_for
    from testbed.core.ports import free_port
    from testbed.core.topology import load_topology

    # The topology's own Compose file (generated unless it is Appendix A's), and the tablet console's
    # port too: the Compose default, 8443, may be a developer's `fmb up`.
    with compose_file_for(topology) as compose_file:
        project = ComposeProject(f"fmbpytest-{os.getpid()}-{secrets.token_hex(3)}", compose_file,
                                 ports={b.name: b.port for b in topology.brokers}, ui_port=free_port())
        bus = None
        try:
            services = [s for s in project.compose("config", "--services").split() if s != HARNESS_SERVICE]
            project.up(services)
            bus = DockerBus(project, load_topology(topology.path))  # the ports inside the Compose networks
            yield bus
        finally:
            if bus is not None:
                bus.close()
            project.down()


@pytest.fixture(scope="session")
def fmb_topology(request: pytest.FixtureRequest) -> Topology:
    """The topology of the session's bus (``--fmb-topology``), on ports that were free."""
    # Not at the top: loading the plugin imports no module of ours (tests/test_pytest_plugin.py).
    from testbed.core.errors import ConfigError

    try:
        return _load_topology(settings(request.config)).with_free_ports()
    except ConfigError as e:
        pytest.fail(f"--fmb-topology (or $FMB_TOPOLOGY, ini fmb_topology): {e}", pytrace=False)


@pytest.fixture(scope="session")
def fmb_pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            fmb_topology: Topology) -> PKI:
    """The PKI of the bus: a fresh one in a temporary folder (docker: the harness's copy of the bus's)."""
    if settings(request.config).backend == "docker":
        pki: PKI = request.getfixturevalue("fmb_bus").pki
        return pki
    # Not at the top: loading the plugin imports no module of ours (tests/test_pytest_plugin.py).
    from testbed.security.provision import ensure_pki

    return ensure_pki(fmb_topology, tmp_path_factory.mktemp("fmb-certs"))


@pytest.fixture(scope="session")
def fmb_bus_factory(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                    fmb_topology: Topology) -> Callable[..., contextlib.AbstractContextManager[Any]]:
    """Start another bus of the chosen backend: ``with fmb_bus_factory() as bus:`` (stopped after).

    ``fmb_bus_factory(topology)`` takes a Topology, a topology name or file; by default the
    session's topology, on new free ports. For a bus per module::

        @pytest.fixture(scope="module")
        def fmb_bus(fmb_bus_factory):
            with fmb_bus_factory() as bus:
                yield bus
    """
    options = settings(request.config)
    pki = request.getfixturevalue("fmb_pki") if options.backend == "local" else None

    @contextlib.contextmanager
    def start(topology: Topology | str | Path | None = None, *, free_ports: bool = True) -> Iterator[Any]:
        topo = fmb_topology if topology is None else _load_topology(options, topology)
        if free_ports:
            topo = topo.with_free_ports()
        if options.backend == "docker":
            with _docker_bus(topo) as bus:
                yield bus
            return
        assert pki is not None
        if topo.path != fmb_topology.path:
            # Not at the top: loading the plugin imports no module of ours (tests/test_pytest_plugin.py).
            from testbed.security.provision import ensure_pki

            ensure_pki(topo, pki.directory)  # identities the other topology adds
        with _local_bus(topo, pki, tmp_path_factory) as bus:
            yield bus

    return start


@pytest.fixture(scope="session")
def fmb_bus(fmb_bus_factory: Callable[..., contextlib.AbstractContextManager[Any]],
            fmb_topology: Topology) -> Iterator[Any]:
    """The session's running bus: a LocalBus, or with ``--fmb-backend docker`` a DockerBus."""
    with fmb_bus_factory(fmb_topology, free_ports=False) as bus:
        yield bus


# -- running scenarios -----------------------------------------------------------------------


class ScenarioResult(dict[str, Any]):
    """A scenario run's result: the ``fmb.scenario-result/1`` dict, plus where its files are.

    Index it like the dict (``result["steps"]``) or use the attributes, which are typed by the
    schema (:class:`testbed.core.results.ScenarioResultDoc`)."""

    __slots__ = ("out",)

    def __init__(self, data: Mapping[str, Any] = {}, out: Path | None = None) -> None:  # noqa: B006 (copied)
        super().__init__(data)
        self.out = out  # the folder of result.json, messages.jsonl, timeline.png, summary.txt

    def _doc(self) -> ScenarioResultDoc:
        return cast("ScenarioResultDoc", self)  # built from one: the runner's, or a result.json read back

    @property
    def passed(self) -> bool:
        return bool(self._doc().get("passed"))

    @property
    def failure(self) -> str | None:
        return self._doc().get("failure")

    @property
    def steps(self) -> list[ScenarioStep]:
        return list(self._doc().get("steps") or [])

    @property
    def e2e_ms(self) -> float | None:
        return self._doc().get("e2e_ms")

    def summary(self) -> str:
        """The timeline as a plain-text table with the verdict (what ``fmb run`` prints)."""
        # Not at the top: loading the plugin imports no module of ours (tests/test_pytest_plugin.py).
        from testbed.reporting.text import summary_table

        return summary_table(self._doc())

    def __repr__(self) -> str:
        verdict = "passed" if self.passed else f"FAILED: {self.failure}"
        return f"<ScenarioResult {self.get('scenario')} {verdict}, files in {self.out}>"


def assert_scenario_passed(result: Mapping[str, Any]) -> None:
    """Fail the test unless ``result`` passed, with the reason, the timeline table and the files.

    ``result`` is a scenario result however held: a :class:`ScenarioResult`, what
    ``ScenarioRunner.run`` returned, or a ``result.json`` read back."""
    __tracebackhide__ = True
    if result.get("passed"):
        return
    # Not at the top: loading the plugin imports no module of ours (tests/test_pytest_plugin.py).
    from testbed.reporting.text import summary_table

    reps = result.get("runs") or []
    failed = next((r for r in reps if not r.get("passed")), None)
    which = f" in repetition {failed['rep']} of {len(reps)}" if failed and len(reps) > 1 else ""
    lines = [f"scenario {result.get('scenario')} failed{which}: {result.get('failure')}", "",
             summary_table(cast("ScenarioResultDoc", result)).rstrip()]
    out = getattr(result, "out", None)
    if out is not None:
        lines += ["", f"result files: {out} ({RESULT_FILES})"]
    pytest.fail("\n".join(lines), pytrace=False)


def _dir_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.")[:150] or "test"


@pytest.fixture
def fmb_run(request: pytest.FixtureRequest, fmb_bus: Any, tmp_path: Path) -> Callable[..., ScenarioResult]:
    """Run a scenario on ``fmb_bus``: ``fmb_run(name_or_path, repeat=1)`` -> :class:`ScenarioResult`.

    ``name_or_path`` is a scenario name (``scenarios/<name>.toml``), a .toml file or a loaded
    Scenario; ``timeout_s`` replaces the scenario's time-out; ``substation`` runs it on that substation
    (default ``--fmb-substation``). The result files go to
    ``<--fmb-runs>/<test id>/<scenario>/`` (else the test's ``tmp_path/<scenario>/``), or to
    ``out``; a scenario that cannot even start (its initial state never holds) raises
    ScenarioError."""
    options = settings(request.config)
    base = options.runs / _dir_name(request.node.nodeid) if options.runs else tmp_path
    used: dict[str, int] = {}

    def run(scenario: str | Path | Scenario, repeat: int = 1, *, timeout_s: float | None = None,
            out: Path | None = None, substation: str | None = None) -> ScenarioResult:
        # Not at the top: loading the plugin imports no module of ours (tests/test_pytest_plugin.py).
        from testbed.core.scenario import load_scenario
        from testbed.harness.runner import ScenarioRunner

        if isinstance(scenario, str | Path):
            scenario = load_scenario(scenario, {d.id: d.role for d in fmb_bus.topology.devices})
        if timeout_s is not None:
            scenario = dataclasses.replace(scenario, timeout_s=float(timeout_s))
        if out is None:
            name = _dir_name(scenario.name or Path(scenario.path).stem)
            used[name] = used.get(name, 0) + 1
            out = base / (name if used[name] == 1 else f"{name}-{used[name]}")
        with ScenarioRunner(fmb_bus, scenario, substation=substation or options.substation) as runner:
            data = runner.run(repeat, out, backend=options.backend)
        return ScenarioResult(data, Path(out))

    return run
