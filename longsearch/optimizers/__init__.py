"""Optimizers behind one ask/tell interface: the genetic algorithm of LongRoPE(2), nevergrad, optuna.

The optimizer proposes, someone else evaluates (Ray workers, a test objective), and tells it back::

    opt = make_optimizer("ga", space, budget="quick", seed=0)
    while not opt.done:
        batch = opt.ask()                       # new, never-evaluated candidates of this generation
        opt.tell([Result(c, objective(c.lam)) for c in batch])
    opt.best().candidate.lam

Guarantees every optimizer keeps (the resume protocol of the run store relies on them):

* ``ask()`` is a pure function of the state: called again before ``tell`` it returns the same
  batch, and after ``load_state_dict(state_dict())`` it returns exactly what the original object
  would have (same ids, same λ).
* ``tell()`` takes the results of the whole batch in any order (they are sorted by id).
* A candidate whose key (λ on the grid and m, :meth:`SearchSpace.point_key`) was asked before is
  never asked again.
* A failed evaluation is a state, not a score: it is told as ``Result(c, math.inf, failed=True)`` (a
  non-finite score counts as failed too). It is never a parent nor the best; the GA drops it, optuna
  gets its trial told ``TrialState.FAIL`` and nevergrad is told nothing (it has no failed state and
  no loss would be true). :meth:`failed` lists the candidates told failed, and :meth:`tell_late`
  takes the result of such a candidate evaluated again later (a resumed run retrying its failures),
  as if the optimizer had had it all along from now on.
* Racing: :meth:`race_bar` is the score a new candidate must beat to matter (the GA: its worst
  parent; the others: the ``parents``-th best so far). An evaluation may stop as soon as its mean
  cannot end below the bar; it is told as a *censored* result whose score is a lower bound (still
  ≥ the bar), so the selection is exactly what full scoring would give. ``Result.cost`` is the
  share of the needle set actually scored; budgets given in evaluations (``"500evals"``) count it.
* ``state_dict()`` is JSON-serializable and reflects the state after the last ``tell``.
"""

from __future__ import annotations

from ..errors import InputError
from ..space import SearchSpace
from .base import BUDGETS, COST_BUDGET_SHAPE, Budget, Candidate, Optimizer, Result, clean_score, resolve_budget


def make_optimizer(spec: str, space: SearchSpace, budget: str | int | Budget, seed: int) -> Optimizer:
    """``"ga"``, ``"nevergrad:NAME"`` or ``"optuna:NAME"`` over ``space`` with ``budget``, seeded.

    The nevergrad and optuna optimizers get the same number of evaluations as the GA would, in
    batches of the same size, and start from the same seeds.
    """
    b = resolve_budget(budget)
    text = str(spec).strip()
    family, _, name = text.partition(":")
    family = family.lower()
    if family == "ga" and not name:
        from .ga import GeneticOptimizer

        return GeneticOptimizer(space, b, seed)
    if family == "nevergrad":
        from .nevergrad import NevergradOptimizer

        return NevergradOptimizer(space, b, seed, name or "TwoPointsDE")
    if family == "optuna":
        from .optuna import OptunaOptimizer

        return OptunaOptimizer(space, b, seed, name or "TPE")
    if family == "random" and not name:
        from .random import RandomOptimizer

        return RandomOptimizer(space, b, seed)
    raise InputError(f"unknown optimizer {spec!r}: use ga, random, nevergrad:NAME (e.g. nevergrad:CMA) or optuna:NAME (e.g. optuna:TPE)")


__all__ = [
    "BUDGETS",
    "COST_BUDGET_SHAPE",
    "Budget",
    "Candidate",
    "Optimizer",
    "Result",
    "clean_score",
    "make_optimizer",
    "resolve_budget",
]
