"""optuna samplers (TPE, CMA-ES, Random, QMC, NSGA-II) over a search space, ask/tell.

Each candidate is an optuna trial with one float parameter ``u{j}`` ∈ [0, 1] per unit-cube
coordinate of the space (d_rcd first for longrope2), decoded and repaired by the space; see
:mod:`longsearch.optimizers.external` for deduplication, seeds and state. The study (in-memory
storage and its seeded sampler) is rebuilt on resume by replaying its history (no pickle). A failed
evaluation's trial is told ``TrialState.FAIL``; a late success is added as a completed trial. optuna's own logging is kept at
warnings.

>>> from longsearch.rope import RopeGeometry
>>> from longsearch.space import SearchSpace
>>> space = SearchSpace.load("longrope2", RopeGeometry(64, 10000.0, 256), 2048)
>>> opt = OptunaOptimizer(space, "quick", seed=0, name="TPE")
>>> len(opt.ask())
8
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InputError
from ..space import SearchSpace
from .base import Budget
from .external import ExternalOptimizer


def _samplers() -> dict[str, Callable[[int], Any]]:
    import optuna.samplers as s

    return {
        "TPE": lambda seed: s.TPESampler(seed=seed),
        "CMA-ES": lambda seed: s.CmaEsSampler(seed=seed, warn_independent_sampling=False),
        "Random": lambda seed: s.RandomSampler(seed=seed),
        "QMC": lambda seed: s.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False),
        "NSGA-II": lambda seed: s.NSGAIISampler(seed=seed),
    }


# GPSampler is left out: over tens of parameters it needs minutes per trial after a few hundred trials.
SUPPORTED: tuple[str, ...] = ("TPE", "CMA-ES", "Random", "QMC", "NSGA-II")
_ALIASES = {
    "cmaes": "CMA-ES",
    "cma": "CMA-ES",
    "nsgaii": "NSGA-II",
    "nsga2": "NSGA-II",
    "random": "Random",
    "tpe": "TPE",
    "qmc": "QMC",
    "sobol": "QMC",
}


def supported_names() -> list[str]:
    return list(SUPPORTED)


def resolve_name(name: str) -> str:
    """The canonical sampler name; InputError for an unknown one."""
    low = name.strip().lower()
    for known in SUPPORTED:
        if known.lower() == low:
            return known
    key = low.replace("-", "").replace("_", "")
    if key in _ALIASES:
        return _ALIASES[key]
    raise InputError(f"optuna sampler {name!r} is not supported: use one of {', '.join(SUPPORTED)}")


class OptunaOptimizer(ExternalOptimizer):
    """An optuna study with a seeded sampler and the GA's budget (same evaluations, batch sizes, seeds)."""

    family = "optuna"

    def __init__(self, space: SearchSpace, budget: str | int | Budget, seed: int = 0, name: str = "TPE") -> None:
        super().__init__(space, budget, seed, resolve_name(name))

    def _distributions(self) -> dict[str, Any]:
        from optuna.distributions import FloatDistribution

        return {f"u{j}": FloatDistribution(0.0, 1.0) for j in range(self.space.n_params)}

    def _create(self) -> Any:
        import optuna

        logging.getLogger("optuna").setLevel(logging.WARNING)
        if self.name == "CMA-ES":
            try:
                import cmaes  # noqa: F401
            except ImportError:
                raise InputError("optuna:CMA-ES needs the cmaes package: pip install cmaes") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sampler = _samplers()[self.name](self.seed)
            return optuna.create_study(direction="minimize", sampler=sampler)

    def _ask_point(self) -> tuple[Any, np.ndarray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = self._impl.ask(fixed_distributions=self._distributions())
        u = np.array([trial.params[f"u{j}"] for j in range(self.space.n_params)], dtype=np.float64)
        return trial.number, u

    def _tell_point(self, handle: Any, loss: float) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._impl.tell(handle, float(loss))

    def _fail_point(self, handle: Any) -> None:
        from optuna.trial import TrialState

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._impl.tell(handle, state=TrialState.FAIL)

    def _tell_late_point(self, handle: Any, loss: float) -> None:
        """A failed trial stays failed (optuna allows no second tell): the loss comes as a completed trial with its
        parameters."""
        from optuna.trial import create_trial

        trial = next(t for t in self._impl.get_trials(deepcopy=False) if t.number == handle)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._impl.add_trial(create_trial(params=dict(trial.params), distributions=self._distributions(), value=float(loss)))

    def _suggest(self, u: np.ndarray) -> None:
        self._impl.enqueue_trial({f"u{j}": float(v) for j, v in enumerate(np.clip(u, 0.0, 1.0))}, skip_if_exists=False)
