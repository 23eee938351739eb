"""Testbed harness: topology, PKI, bus supervision, scenario runner, results and CLI."""
