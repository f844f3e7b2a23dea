"""HDF5 traces: record every step a rule consumed, inspect them, replay them exactly.

>>> tw = noisesim.trace.TraceWriter("run.h5", net, rule)        # doctest: +SKIP
>>> scenarios.train(net, rule, data, on_step=tw.on_step); tw.close()   # doctest: +SKIP
>>> noisesim.trace.info("run.h5")["complete_steps"]             # doctest: +SKIP
>>> noisesim.trace.replay("run.h5").matches                     # doctest: +SKIP
True

The file format (version 2: one named dataset per recorded array, readable with h5py alone)
is described in ``docs/trace-format.md`` and :mod:`noisesim.trace.format`. Reading is safe on
untrusted files: JSON and numeric datasets only, everything validated before data is read, one
error class (:class:`TraceError`, a ``ValueError``) for every problem.
"""
from .format import FORMAT_NAME, FORMAT_VERSION, TraceError, TraceWarning, TraceWriteError
from .info import format_info, info
from .reader import TraceReader, TraceStep, open_trace
from .replay import ReplayedEstimate, ReplayResult, build_network, build_rule, replay, start
from .writer import TraceWriter, leave_a_core

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "TraceError", "TraceWarning", "TraceWriteError", "TraceReader", "TraceStep",
           "open_trace", "TraceWriter", "replay", "start", "build_network", "build_rule", "ReplayResult",
           "ReplayedEstimate", "info", "format_info", "leave_a_core"]
