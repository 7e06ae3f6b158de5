"""Search spaces: which candidates (λ, m) a search may propose, and how to bring any candidate into them.

A space is read from a YAML preset (``hybrid``, ``yarn``, ``longrope2``, ``longrope``; shipped in
``longsearch/search_spaces/``) or from a user's YAML file, and resolved for one model geometry and target
length. Its ``kind`` names a class in :data:`KINDS`, one module each:

* ``longrope2`` (:mod:`.longrope2`) — LongRoPE2: a searched critical index d_rcd, a searched non-decreasing
  tail λ_i ∈ [lower, upper] for i ≥ d_rcd, an NTK-shaped head below it, m fixed.
* ``free`` (:mod:`.free`; the ``longrope`` preset) — LongRoPE v1: every λ_i searched on the grid.
* ``hybrid`` (:mod:`.hybrid`; the default) — LongRoPE2's tail, a head from a searched family that holds
  PI, NTK, YaRN and LongRoPE2's head shapes, and m searched.
* ``yarn`` (:mod:`.yarn`) — the YaRN family: β_fast, β_slow and m searched.

Every candidate is a :class:`Point`: λ, m, and the structural parameters that produced λ (``d_rcd``,
``head_start``, ``head_shape``, ``beta_fast``, ``beta_slow``) — the one source of truth for them. Every kind
follows the protocol of :class:`SearchSpace` (base.py): :meth:`~SearchSpace.make_point` (the repair),
:meth:`~SearchSpace.seed_points`, :meth:`~SearchSpace.sample_point`, :meth:`~SearchSpace.decode_point` /
:meth:`~SearchSpace.encode_point` on ``[0, 1]^n_params``, :meth:`~SearchSpace.point_key`, the GA operators
:meth:`~SearchSpace.mutate` / :meth:`~SearchSpace.crossover`, :meth:`~SearchSpace.describe` and
:meth:`~SearchSpace.to_dict` / :meth:`SearchSpace.from_dict`. The grid of searched values is a
:class:`Grid` (grid.py); the YAML helpers every kind shares are in spec.py; what the kinds with a
per-frequency tail share is in tail.py, and what those with a critical index share in critical.py.

A new kind is one module (a subclass stating its ``kind``, ``KEYS``, defaults and point operations) and
one line in :data:`KINDS`; see ``search_spaces/README.md``.

>>> import numpy as np
>>> from longsearch.rope import RopeGeometry
>>> g = RopeGeometry(rotary_dim=64, base=10000.0, original_length=256)
>>> space = SearchSpace.load("longrope2", g, target_length=2048)
>>> type(space).__name__, space.critical_range
('LongRoPE2Space', (5, 13))
>>> list(space.seed_points())
['seed:pi', 'seed:ntk+yarn', 'seed:ntk-shaped@5', 'seed:ntk-shaped@9', 'seed:ntk-shaped@13']
>>> p = space.make_point(np.linspace(1.0, 20.0, 32), d_rcd=9)
>>> space.contains_point(p), p.params, float(p.lam[9]), float(p.lam[-1])
(True, {'d_rcd': 9}, 8.0, 16.0)
"""

from __future__ import annotations

from .base import KINDS, Point, SearchSpace
from .free import FreeSpace
from .grid import Grid
from .hybrid import HybridSpace, hybrid_head
from .longrope2 import LongRoPE2Space
from .spec import eval_bound, preset_names, preset_path
from .yarn import YarnSpace

# kind name → class (the dict lives in base.py). The order is that of the kinds in messages and of reading
# their keys (base.from_spec).
KINDS.update(
    {
        "longrope2": LongRoPE2Space,
        "free": FreeSpace,
        "hybrid": HybridSpace,
        "yarn": YarnSpace,
    }
)

__all__ = [
    "KINDS",
    "FreeSpace",
    "Grid",
    "HybridSpace",
    "LongRoPE2Space",
    "Point",
    "SearchSpace",
    "YarnSpace",
    "eval_bound",
    "hybrid_head",
    "preset_names",
    "preset_path",
]
