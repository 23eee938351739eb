"""The capacity model: a discrete-event (simpy) model of the bus, calibrated on real brokers here
(:mod:`~testbed.model.measure`, :mod:`~testbed.model.calibration`), checked against the benchmarks'
measurements (:mod:`~testbed.model.validate`), that answers questions one machine cannot run
(:mod:`~testbed.model.answers`). :mod:`~testbed.model.sim` is the engine (brokers, links, routes,
sources), :mod:`~testbed.model.bus` the bus built on it, :mod:`~testbed.model.plots` the figures."""
