"""Registry-driven parametrization for the variants tests (see ``helpers.py``).

A test that takes ``point`` runs on every grid point of every model kind (``variants.registry.KINDS``);
``lm_point``, ``s2s_point`` and ``enc_point`` restrict the grid to one kind. A point is a dict ``{"kind": ..., <slot>: <name>}``;
``helpers.config_of(point)`` turns it into a tiny ``ModelConfig``.
"""

from tests.variants.helpers import grid_params
from variants.registry import KINDS

_KINDS = {"point": tuple(KINDS.names()), "lm_point": ("lm",), "s2s_point": ("seq2seq",), "enc_point": ("encoder",)}


def pytest_generate_tests(metafunc):
    for name, kinds in _KINDS.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, grid_params(kinds))
