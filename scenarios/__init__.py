"""Experiments on the simulated device: datasets, the training loop, scenarios, the CLI.

>>> import scenarios
>>> data = scenarios.load("digits")
>>> data.x_train.shape
(1437, 64)
"""
from . import quickstart as _quickstart  # noqa: F401  (registers the scenario)
from .datasets import DATASETS, Dataset, load
from .scenario import SCENARIOS, Scenario, apply_overrides
from .train import History, evaluate, train

__all__ = ["DATASETS", "Dataset", "load", "SCENARIOS", "Scenario", "apply_overrides",
           "History", "evaluate", "train"]
