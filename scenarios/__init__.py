"""Experiments on the simulated device: datasets, the training loop, scenarios, the CLI.

>>> import scenarios
>>> data = scenarios.load("digits")
>>> data.x_train.shape
(1437, 64)
>>> "alignment" in scenarios.SCENARIOS or True
True
"""
from .checkpoint import Checkpoint
from .datasets import DATASETS, Dataset, load
from .result import Array, Claim, Figure, Panel, Result, Series, Table
from .scenario import SCENARIOS, Context, Scenario, apply_overrides, configure
from .train import History, evaluate, train
from . import experiments as _experiments  # noqa: E402,F401  (registers every scenario)


def run(name: str, *settings, quick: bool = False, progress: bool = False, **overrides) -> Result:
    """Run scenario ``name`` from Python: ``scenarios.run("alignment", "n_seeds=1", quick=True)``.

    ``settings`` are ``key=value`` strings as on the command line, ``overrides`` keyword
    settings; returns the :class:`Result` (nothing is written; see :mod:`scenarios.output`).
    """
    from .scenario import execute, get

    sc = get(name)
    cfg = configure(sc, [*settings, *overrides.items()], quick=quick)
    return execute(sc, cfg, Context(progress=progress, scenario=name))


__all__ = ["Checkpoint", "DATASETS", "Dataset", "load", "SCENARIOS", "Scenario", "Context", "apply_overrides", "configure",
           "History", "evaluate", "train", "run", "Result", "Table", "Array", "Figure", "Panel", "Series", "Claim"]
