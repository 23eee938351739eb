"""The command lines: ``fmb`` (:mod:`testbed.cli.fmb`) and the one inside the Compose services
(:mod:`testbed.cli.containers`).

This package imports nothing itself, so that ``python -m testbed.cli.containers`` in an init or
device container loads only what that container runs: ``fmb``'s command groups load the
benchmarks and matplotlib, which needs a writable directory those read-only containers lack.
"""
