"""Numbers reported by the node-perturbation paper (Dalm, van Gerven & Ahmad), for the
scenarios' "paper" columns and their ``scale=paper`` settings.

Architectures are the columns of its Table 1/2: ``"1 layer"``, ``"3 hidden"``, ``"6 hidden"``,
``"9 hidden"``, ``"convnet"``, ``"convnet-tiny"``. Rates are Adam's η at batch 1000 with
σ² = 1e-6 and α = 1e-3, each "the highest stable learning rate" of that experiment (Table 2;
its text extraction drops empty cells, so each row is read against the experiments that rule
ran in Table 3/4).
"""
from __future__ import annotations

ARCHITECTURES = ("1 layer", "3 hidden", "6 hidden", "9 hidden", "convnet", "convnet-tiny")

# Table 2: learning rates
LEARNING_RATES: dict[str, dict[str, float]] = {
    "1 layer": {"np": 1e-3, "dnp": 1e-3, "bp": 1e-3, "dbp": 1e-3},
    "3 hidden": {"np": 1e-4, "dnp": 1e-3, "anp": 1e-4, "danp": 1e-3, "inp": 1e-4, "dinp": 1e-3,
                 "bp": 1e-4, "dbp": 1e-3},
    "6 hidden": {"dnp": 5e-3, "danp": 5e-3, "dinp": 5e-3},
    "9 hidden": {"dnp": 5e-3, "danp": 5e-3, "dinp": 5e-3},
    "convnet": {"dnp": 1e-3, "anp": 1e-4, "danp": 1e-4, "inp": 1e-4, "dinp": 1e-4, "bp": 1e-3,
                "dbp": 1e-3},
    "convnet-tiny": {"danp": 1e-3, "dinp": 1e-3, "bp": 1e-4},
}

# Table 3: peak (train, test) accuracy in percent on CIFAR-10
PEAK_ACCURACY: dict[str, dict[str, tuple[float, float]]] = {
    "1 layer": {"bp": (41.3, 39.3), "dbp": (44.9, 40.9), "np": (38.5, 38.2), "dnp": (42.8, 40.2)},
    "3 hidden": {"bp": (59.6, 51.5), "dbp": (99.6, 54.3), "np": (28.1, 28.1), "dnp": (44.9, 42.1),
                 "anp": (30.4, 30.6), "danp": (48.5, 44.4), "inp": (32.0, 32.0), "dinp": (52.6, 46.3)},
    "6 hidden": {"dnp": (46.7, 43.1), "danp": (47.3, 44.2), "dinp": (53.0, 46.6)},
    "9 hidden": {"dnp": (40.5, 38.6), "danp": (44.8, 42.7), "dinp": (52.0, 45.3)},
    "convnet": {"bp": (100.0, 62.1), "dbp": (100.0, 60.5), "np": (45.2, 44.5), "dnp": (50.2, 47.9),
                "anp": (52.7, 49.9), "danp": (58.2, 52.6), "inp": (52.3, 49.9), "dinp": (57.9, 52.2)},
}

# Table 4: peak (train, test) accuracy in percent on Tiny ImageNet, by (rule, samples per update)
TINY_IMAGENET: dict[tuple[str, int], tuple[float, float]] = {
    ("bp", 1): (55.5, 14.5),
    ("danp", 1): (2.2, 2.1), ("danp", 10): (13.5, 9.0), ("danp", 30): (32.8, 11.3), ("danp", 100): (35.4, 12.0),
    ("dinp", 1): (2.0, 2.0), ("dinp", 10): (11.4, 8.1), ("dinp", 30): (26.7, 11.8), ("dinp", 100): (60.8, 13.4),
    ("dnp", 100): (9.7, 7.5),
}

# Appendix J: final test MSE on SARCOS (21-32-32-7, 500 epochs, rates by doubling from 1e-7)
SARCOS_TEST_LOSS = {"np": 11.18, "dnp": 10.51, "anp": 15.86, "danp": 9.79, "bp": 9.48, "dbp": 7.02}
SARCOS_ALPHA = {"dnp": 1e-4, "danp": 1e-4, "dbp": 1e-3}


def learning_rate(architecture: str, rule: str) -> float | None:
    """Table 2's rate for ``rule`` in ``architecture``, or ``None`` when the paper gives none."""
    if architecture not in LEARNING_RATES:
        raise ValueError(f"architecture {architecture!r} is not one of {list(LEARNING_RATES)}")
    return LEARNING_RATES[architecture].get(rule)


def depth_architecture(n_hidden: int) -> str:
    """The Table 1 column of a fully connected network with ``n_hidden`` hidden layers."""
    return "1 layer" if n_hidden == 0 else f"{n_hidden} hidden"
