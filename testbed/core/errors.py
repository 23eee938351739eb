"""The testbed's one error tree.

    TestbedError                 anything the testbed reports to a user as one line
    ├── ConfigError              a topology, scenario or settings file is wrong, or names nothing it has
    │                            (names file, field, fix; a lookup of an unknown name lists what exists)
    ├── PKIError                 certificates missing, unreadable or inconsistent
    ├── BrokerError              a broker will not start or take a subscription, or mosquitto is missing
    ├── DeviceError              a device, feeder model or monitor process cannot start or died
    ├── ScenarioError            a scenario could not be run (not: a scenario that failed)
    ├── BenchmarkError           a benchmark could not measure (nothing flowed, a helper never subscribed)
    ├── FaultError               a fault could not be injected (testbed.backends.faults)
    ├── WaitTimeout              what testbed.core.waiting.wait_until waited for did not happen in time
    ├── PayloadError             a message does not fit its profile; also a ValueError (testbed.core.payloads)
    └── CommandRejected          a command an actuator must not execute (testbed.security.signing)

Every message says what to fix. The CLI prints it on one line and exits non-zero; so does the
``main()`` of every process (devices, feeder models, the monitor): below a ``main()`` nothing
raises ``SystemExit``. The last three are also importable from the modules named beside them,
where they have always been.
"""

from __future__ import annotations

__all__ = [
    "WaitTimeout",
    "BenchmarkError",
    "BrokerError",
    "CommandRejected",
    "ConfigError",
    "DeviceError",
    "FaultError",
    "PKIError",
    "PayloadError",
    "ScenarioError",
    "TestbedError",
]


class TestbedError(Exception):
    """Base of every error the testbed reports to a user."""

    __test__ = False  # not a pytest test class despite the name


class ConfigError(TestbedError):
    """A topology or scenario file is invalid, or a name is not in it."""

    def __init__(self, path: object, field: str, problem: str, fix: str) -> None:
        self.path = str(path)
        self.field = field
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: {field}" if field else self.path
        super().__init__(f"{where}: {problem}; {fix}")


class PKIError(TestbedError):
    """The PKI is missing, unreadable or inconsistent."""


class BrokerError(TestbedError):
    """A broker cannot be configured, started or subscribed to."""


class DeviceError(TestbedError):
    """A device process (or a feeder model, or the monitor) failed or cannot start."""


class ScenarioError(TestbedError):
    """A scenario could not be run at all."""


class BenchmarkError(TestbedError):
    """A benchmark could not take its measurement."""


class FaultError(TestbedError):
    """A fault could not be applied (unknown target, unsupported by this backend, no rights)."""


class PayloadError(TestbedError, ValueError):
    """A payload that does not fit its profile; the message says what is wrong.

    Also a ``ValueError``: code that decodes untrusted bytes catches both with ``except ValueError``.
    """


class CommandRejected(TestbedError):
    """A command an actuator must not execute; the message says why."""


class WaitTimeout(TestbedError):
    """What :func:`testbed.core.waiting.wait_until` waited for did not happen before its deadline."""
