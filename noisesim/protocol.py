"""The protocol every learning rule trains through, and the estimate a rule returns.

Rules depend on a network only through the methods of :class:`DeviceNetwork`, so anything
implementing them — the simulated :class:`~noisesim.network.Network`, a binding to a real
chip, an adapter to another simulator — can be trained by every rule in ``rules``.
:class:`Estimate` is what one rule step computes; traces record it and replays rebuild it, so
it lives here, below the rules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable


@dataclass
class Estimate:
    """One batch's update directions and what the rule observed to make them.

    ``updates[l]`` is ``ΔW_l`` (shape of ``W_l``); ``inputs[l]`` the decorrelated input
    ``x*_{l-1}`` of the reference pass, shape ``(B, n_{l-1})`` (a convolution's patch vectors,
    ``(B, *positions, k·C_in)``); ``outputs`` the reference
    pass's network output (``None`` when rebuilt from a trace); ``losses`` the per-sample
    losses of the reference pass; ``record`` the arrays the rule consumed (what a trace stores).
    ``finite``: the update arrays the rule found finite while forming them (the divergence
    guard does not pass over these again; an update replaced since is checked as usual).
    """

    updates: list
    loss: float
    forward_passes: int
    inputs: list
    outputs: Any = None
    losses: Any = None
    record: dict = field(default_factory=dict)
    finite: tuple = ()


@runtime_checkable
class DeviceNetwork(Protocol):
    sizes: list            # units per layer (all positions × channels of a convolution), input first
    xp: Any                # array module of the device's arrays
    dtype: Any             # floating dtype of the device's arrays

    @property
    def n_layers(self) -> int: ...
    @property
    def grants(self) -> frozenset: ...
    def require(self, who: str, needs: Sequence[str]) -> None: ...

    def forward(self, x, *, purpose: str = "train"): ...
    def forward_stacked(self, x, passes: int, *, clean=None, inject=None, purpose: str = "train"): ...
    def stack(self, x, passes: int, *, clean=None, purpose: str = "train"): ...  # .run(a, b, inject=, omega=)
    def act(self, l: int, a): ...
    def act_grad(self, l: int, a): ...
    def forward_weight_perturbed(self, x, omega, *, clean=None, purpose: str = "train"): ...  # needs "inject"
    def backward_read(self, l: int, d): ...            # needs "backward"
    # optional, for convolutions and biases (a device without them is fully connected):
    # layers — per layer a noisesim.layers.Layer (shapes, read width, positions);
    # layer_input(l, h) — x* of layer l from its input (unfold, R, bias input);
    # input_gradient(l, d) — ∂L/∂x_{l−1} from ∂L/∂x*_l (bias dropped, Rᵀ, fold)
    def weights(self, l: int): ...                     # needs "oracle"
    def random(self, name: str): ...

    def decorrelation(self, l: int): ...
    def enable_decorrelation(self) -> None: ...
    def apply_update(self, l: int, delta) -> None: ...
    # optional: update_in_place(l) — W_l when a vouched delta may be added to it in place
    # with apply_update's bits, else None (Adam then skips its array of deltas)
    def apply_decorrelation_update(self, l: int, delta) -> None: ...
    def set_decorrelation(self, l: int, R) -> None: ...       # digital R_l ← R (checked by the caller)
    def get_state(self) -> dict: ...                   # weights and R (host copies)
    def set_state(self, state: dict) -> None: ...
    def state(self) -> dict: ...                       # complete state (checkpoints, traces)
    def load_state(self, state: dict) -> None: ...
