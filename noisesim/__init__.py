"""noisesim — a simulator of noisy analog neuromorphic hardware.

>>> import noisesim
>>> dev = noisesim.DeviceConfig.preset("ideal", node_noise=1e-3)
>>> net = noisesim.Network.mlp([64, 32, 10], device=dev, seed=0, backend="numpy")
>>> p = net.forward(__import__("numpy").zeros((5, 64), "float32"))
>>> cnn = noisesim.Network.build((8, 8, 1), "c3x3x8 c3x3x8s2 f10", device=dev, seed=0)
"""
from ._version import __version__
from . import heap
if heap.wanted():
    heap.keep_freed_memory()          # freed arrays stay in the heap for the next step (see noisesim.heap)
from .activation import Activation
from .backend import Backend, Streams, cupy_available, get_array_module, get_backend, to_numpy
from .config import ACCESS_LEVELS, DeviceConfig
from .errors import AccessError, DivergenceError
from .layers import Conv, Dense, Flatten
from .network import Network, Pass
from .presets import PRESETS
from .protocol import DeviceNetwork, Estimate
from .tile import Tile
from . import layers, registry, state  # noqa: E402  (rule registry; complete state to and from HDF5)
from . import trace  # noqa: E402  (HDF5 traces: noisesim.trace.TraceWriter, open_trace, replay)

__all__ = [
    "__version__", "Activation", "Backend", "Streams", "cupy_available", "get_array_module",
    "get_backend", "to_numpy", "ACCESS_LEVELS", "DeviceConfig", "AccessError", "DivergenceError",
    "Network", "Pass", "Conv", "Dense", "Flatten", "PRESETS", "DeviceNetwork", "Estimate", "Tile", "layers", "registry",
    "state", "trace",
]
