"""Algorithm components. Importing this package imports every module in it, so each module's
``@register_algorithm`` classes register themselves: a new algorithm is a new module here, listed
nowhere else (``alignbench.registry.load_algorithms`` adds those of installed packages)."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
