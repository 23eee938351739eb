"""Simulated field-message-bus devices, one module per role, each a process of its own.

Run one with ``python -m devices.<role>`` (tablet, supply, meter, capbank, dms) or the feeder
model with ``python -m devices.feeder``; they are configured by ``FMB_*`` environment
variables (see :mod:`devices.base`), so the same code runs as a local process or a container.
"""
