"""The scenarios: one module each, registered with :func:`scenarios.scenario.register`.

Importing this package imports every module in it, so adding a scenario is adding a module;
``tests/test_scenarios.py`` fails when a module here registers no scenario.
"""
import importlib
import pkgutil

MODULES = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
for _name in MODULES:
    importlib.import_module(f"{__name__}.{_name}")
