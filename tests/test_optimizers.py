"""Optimizers: the GA's behaviour on synthetic objectives, dedup, elitism, determinism, state round
trips (the resume protocol), budgets, and nevergrad / optuna behind the same interface."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from longsearch.errors import InputError, RunError
from longsearch.optimizers import BUDGETS, Budget, Candidate, Result, make_optimizer, resolve_budget
from longsearch.optimizers.ga import GeneticOptimizer
from longsearch.rope import RopeGeometry
from longsearch.space import SearchSpace

TESTBED = RopeGeometry(64, 10000.0, 256)
LLAMA3 = RopeGeometry(128, 500000.0, 8192)
SMALL = Budget(population=12, parents=6, mutations=3, crossovers=3, generations=6)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.load("longrope2", TESTBED, 2048)


def seed_lams(sp: SearchSpace) -> dict[str, np.ndarray]:
    """``"seed:NAME"`` → the λ of each seed point."""
    return {name: p.lam for name, p in sp.seed_points().items()}


def repaired(sp: SearchSpace, lam: np.ndarray, d_rcd: int | None = None) -> np.ndarray:
    """λ brought into the space (at ``d_rcd`` when given)."""
    return (sp.make_point(lam) if d_rcd is None else sp.make_point(lam, d_rcd=d_rcd)).lam


def critical_index(sp: SearchSpace, lam: np.ndarray) -> int:
    """d_rcd of λ in a longrope2 space (its own when λ has the structure)."""
    return sp.make_point(lam).params["d_rcd"]


def log_distance(target: np.ndarray):
    return lambda lam: float(np.sum((np.log(lam) - np.log(target)) ** 2))


def run(opt, objective, stop_after: int | None = None) -> list[list[Candidate]]:
    """Drive ask/tell to the end (or for ``stop_after`` generations); returns every batch asked."""
    batches = []
    while not opt.done and (stop_after is None or len(batches) < stop_after):
        batch = opt.ask()
        batches.append(batch)
        opt.tell([Result(c, objective(c.lam)) for c in batch])
    return batches


def flat(batches):
    return [c for b in batches for c in b]


def same_batches(a, b):
    assert [[c.id for c in x] for x in a] == [[c.id for c in x] for x in b]
    for x, y in zip(flat(a), flat(b), strict=True):
        np.testing.assert_array_equal(x.lam, y.lam)
        assert (x.origin, x.generation, x.params, x.parents) == (y.origin, y.generation, y.params, y.parents)


# ---------------------------------------------------------------- budgets


def test_budgets():
    assert BUDGETS["paper"] == Budget(64, 32, 16, 16, 40)
    assert BUDGETS["paper"].evaluations == 64 + 40 * 32 == 1344
    assert BUDGETS["quick"].evaluations <= 24
    assert resolve_budget("12") == Budget(64, 32, 16, 16, 12) == resolve_budget(12)
    for bad in ("huge", -1, "1.5", True):
        with pytest.raises(InputError, match="budget"):
            resolve_budget(bad)


def test_unknown_optimizer_specs(space):
    for spec in ("sgd", "ga:fast", "nevergrad:NoSuchThing", "optuna:Grid"):
        with pytest.raises(InputError):
            make_optimizer(spec, space, "quick", 0)


# ---------------------------------------------------------------- the GA


def test_ga_generation_zero_is_seeds_then_mutations(space):
    opt = GeneticOptimizer(space, "paper", seed=0)
    batch = opt.ask()
    assert len(batch) == 64 and [c.id for c in batch] == list(range(64))
    seeds = seed_lams(space)
    assert [c.origin for c in batch[: len(seeds)]] == list(seeds)
    for c, lam in zip(batch, seeds.values(), strict=False):  # the batch may hold fewer than all seeds
        np.testing.assert_array_equal(c.lam, lam)
    rest = batch[len(seeds) :]
    assert all(c.origin == "mutation" for c in rest)
    assert all(c.parents[0] < len(seeds) for c in rest)
    assert opt.ask()[5].lam.tolist() == batch[5].lam.tolist()  # ask is idempotent until tell


def test_ga_quick_budget_sizes(space):
    opt = make_optimizer("ga", space, "quick", seed=0)
    batches = run(opt, log_distance(seed_lams(space)["seed:pi"]))
    b = BUDGETS["quick"]
    assert [len(x) for x in batches] == [b.population] + [b.per_generation] * b.generations
    assert opt.done and opt.generation == b.generations + 1 and opt.ask() == []


@pytest.mark.parametrize("geometry,target", [(TESTBED, 2048), (LLAMA3, 131072)])
def test_ga_candidates_are_valid_new_and_sequential(geometry, target):
    sp = SearchSpace.load("longrope2", geometry, target)
    opt = GeneticOptimizer(sp, SMALL, seed=3)
    batches = run(opt, log_distance(repaired(sp, np.linspace(sp.lower, sp.upper, geometry.n_freq))))
    cands = flat(batches)
    assert [c.id for c in cands] == list(range(len(cands))) and len(cands) == SMALL.evaluations
    keys = [sp.point_key(c.point) for c in cands]
    assert len(set(keys)) == len(keys), "a key was asked twice"
    for c in cands:
        assert sp.contains_point(c.point)
        assert c.params["d_rcd"] == critical_index(sp, c.lam)
    origins = {c.origin for c in cands if c.generation > 0}
    assert origins <= {"mutation", "crossover", "random"} and "crossover" in origins and "mutation" in origins


def test_ga_improves_and_finds_the_target_region(space):
    target = repaired(space, np.linspace(8.0, 16.0, 32), 9)
    f = log_distance(target)
    opt = GeneticOptimizer(space, "paper", seed=0)
    best_per_gen = []
    while not opt.done:
        run(opt, f, stop_after=1)
        best_per_gen.append(opt.best().score)
    assert all(b <= a for a, b in itertools.pairwise(best_per_gen)), "elitism: the best never gets worse"
    assert best_per_gen[-1] < 0.25 * best_per_gen[0]
    assert abs(opt.best().candidate.params["d_rcd"] - 9) <= 1
    assert opt.n_evaluated == 1344


def test_ga_finds_an_exact_optimum(space):
    # optimum: d_rcd = 7 with every searched λ = s (PI's tail); reachable from the PI seed
    def f(lam):
        d = critical_index(space, lam)
        return abs(d - 7) + float(np.sum(np.abs(lam[d:] - 8.0)))

    opt = GeneticOptimizer(space, SMALL, seed=1)
    run(opt, f)
    best = opt.best()
    assert best.score == 0.0 and best.candidate.params["d_rcd"] == 7


def test_ga_elitism_keeps_the_best_and_survivors_are_the_best(space):
    rng = np.random.default_rng(0)
    scores: dict[int, float] = {}

    def tell_random(opt):
        batch = opt.ask()
        res = [Result(c, float(rng.random())) for c in batch]
        scores.update({r.candidate.id: r.score for r in res})
        opt.tell(res)

    opt = GeneticOptimizer(space, SMALL, seed=0)
    while not opt.done:
        tell_random(opt)
        survivors = [r.candidate.id for r in opt.parents]
        expected = sorted(scores, key=lambda i: (scores[i], i))[: SMALL.parents]
        # survivors are the best of everything seen (elitism over parents + children each generation)
        assert survivors == expected
        assert opt.best().candidate.id == expected[0]


def test_ga_failed_evaluations_are_not_best_and_not_reasked(space):
    opt = GeneticOptimizer(space, SMALL, seed=0)
    asked = []
    while not opt.done:
        batch = opt.ask()
        asked += batch
        opt.tell([Result(c, math.inf if c.id % 2 == 0 else (math.nan if c.id % 3 == 0 else float(c.id))) for c in batch])
    best = opt.best()
    assert best.candidate.id % 2 == 1 and best.candidate.id % 3 != 0 and best.score == 1.0
    assert len({space.point_key(c.point) for c in asked}) == len(asked)
    json.dumps(opt.state_dict(), allow_nan=False)  # strict JSON: failed scores are stored as null


def test_ga_is_deterministic_and_seed_dependent(space):
    f = log_distance(seed_lams(space)["seed:pi"])
    a = run(GeneticOptimizer(space, SMALL, seed=5), f)
    b = run(GeneticOptimizer(space, SMALL, seed=5), f)
    c = run(GeneticOptimizer(space, SMALL, seed=6), f)
    same_batches(a, b)
    assert [x.lam.tolist() for x in flat(a)] != [x.lam.tolist() for x in flat(c)]


def test_ga_tell_is_order_independent_and_checks_the_batch(space):
    f = log_distance(seed_lams(space)["seed:pi"])
    a, b = GeneticOptimizer(space, SMALL, seed=2), GeneticOptimizer(space, SMALL, seed=2)
    for _ in range(3):
        ba, bb = a.ask(), b.ask()
        a.tell([Result(c, f(c.lam)) for c in ba])
        b.tell([Result(c, f(c.lam)) for c in reversed(bb)])
    assert a.state_dict() == b.state_dict()
    batch = a.ask()
    with pytest.raises(ValueError, match="whole batch"):
        a.tell([Result(c, 1.0) for c in batch[:-1]])
    with pytest.raises(ValueError, match="not in the pending batch"):
        a.tell([Result(Candidate(9999, batch[0].point, 0, "x"), 1.0)])
    with pytest.raises(RuntimeError):
        GeneticOptimizer(space, SMALL, seed=2).tell([])


def test_ga_free_space(space):
    sp = SearchSpace.load("longrope", TESTBED, 2048)
    opt = make_optimizer("ga", sp, SMALL, seed=0)
    target = repaired(sp, np.linspace(1.0, 9.0, 32))
    cands = flat(run(opt, log_distance(target)))
    assert all(sp.contains_point(c.point) and "d_rcd" not in c.params for c in cands)
    assert len({sp.point_key(c.point) for c in cands}) == len(cands)
    assert opt.best().score < min(log_distance(target)(v) for v in seed_lams(sp).values())


# ---------------------------------------------------------------- state round trips (the resume protocol)


def roundtrip(opt, spec: str, space: SearchSpace, budget, seed: int):
    state = json.loads(json.dumps(opt.state_dict(), allow_nan=False))
    other = make_optimizer(spec, space, budget, seed)
    other.load_state_dict(state)
    return other


@pytest.mark.parametrize(
    "spec,budget",
    [
        ("ga", SMALL),
        ("nevergrad:CMA", Budget(8, 4, 2, 2, 3)),
        ("nevergrad:TwoPointsDE", Budget(8, 4, 2, 2, 3)),
        ("optuna:TPE", Budget(8, 4, 2, 2, 3)),
        ("random", Budget(8, 4, 2, 2, 3)),
    ],
)
def test_killed_mid_generation_and_resumed_equals_uninterrupted(space, spec, budget):
    f = log_distance(repaired(space, np.linspace(8.0, 16.0, 32), 9))
    full = run(make_optimizer(spec, space, budget, 7), f)
    full_best = None

    # interrupted run: two generations, then a third is asked and half-evaluated (the "journal")
    opt = make_optimizer(spec, space, budget, 7)
    done = run(opt, f, stop_after=2)
    checkpoint = json.dumps(opt.state_dict(), allow_nan=False)
    partial = opt.ask()
    journal = {c.id: (space.point_key(c.point), f(c.lam)) for c in partial[: len(partial) // 2]}
    del opt  # SIGKILL

    resumed = make_optimizer(spec, space, budget, 7)
    resumed.load_state_dict(json.loads(checkpoint))
    again = resumed.ask()
    same_batches([partial], [again])
    results = []
    for c in again:
        if c.id in journal and journal[c.id][0] == space.point_key(c.point):
            results.append(Result(c, journal[c.id][1]))  # re-used, not re-evaluated
        else:
            results.append(Result(c, f(c.lam)))
    resumed.tell(results)
    rest = run(resumed, f)
    same_batches(full, [*done, again, *rest])
    ref = make_optimizer(spec, space, budget, 7)
    run(ref, f)
    full_best = ref.best()
    assert resumed.best().candidate.id == full_best.candidate.id
    np.testing.assert_array_equal(resumed.best().candidate.lam, full_best.candidate.lam)
    # the state is data only (no pickle) and identical, event history included
    a, b = resumed.state_dict(), ref.state_dict()
    assert "pickle" not in a and a == b


def test_state_dict_during_a_pending_ask_is_the_state_before_it(space):
    opt = GeneticOptimizer(space, SMALL, seed=0)
    run(opt, log_distance(seed_lams(space)["seed:pi"]), stop_after=1)
    before = opt.state_dict()
    opt.ask()
    assert opt.state_dict() == before


def test_load_state_dict_refuses_mismatches(space):
    opt = GeneticOptimizer(space, SMALL, seed=0)
    run(opt, log_distance(seed_lams(space)["seed:pi"]), stop_after=1)
    state = opt.state_dict()
    with pytest.raises(RunError, match="budget"):
        GeneticOptimizer(space, "quick", seed=0).load_state_dict(state)
    with pytest.raises(RunError, match="length"):
        GeneticOptimizer(SearchSpace.load("longrope2", LLAMA3, 131072), SMALL, 0).load_state_dict(state)
    broken = dict(state)
    del broken["seen"]
    with pytest.raises(RunError, match="malformed"):
        GeneticOptimizer(space, SMALL, seed=0).load_state_dict(broken)
    with pytest.raises(RunError, match="optimizer state"):
        make_optimizer("optuna:TPE", space, SMALL, 0).load_state_dict(state)
    ng = make_optimizer("nevergrad:OnePlusOne", space, SMALL, 0)
    run(ng, log_distance(seed_lams(space)["seed:pi"]), stop_after=1)
    ng_state = ng.state_dict()
    # a checkpoint holding a pickle (what earlier versions wrote) is refused before anything is unpickled
    import base64
    import pickle

    with_pickle = dict(ng_state, pickle=base64.b64encode(pickle.dumps({"x": 1})).decode())
    with pytest.raises(RunError, match="not plain data"):
        make_optimizer("nevergrad:OnePlusOne", space, SMALL, 0).load_state_dict(with_pickle)
    # a history that does not replay to the same points (another library version, an edited file) is refused
    edited = json.loads(json.dumps(ng_state))
    first_ask = next(i for i, e in enumerate(edited["events"]) if "ask" in e)
    edited["events"][first_ask]["ask"] = "0" * 16
    with pytest.raises(RunError, match="another point"):
        make_optimizer("nevergrad:OnePlusOne", space, SMALL, 0).load_state_dict(edited)
    broken_events = dict(ng_state, events=[{"what": 1}])
    with pytest.raises(RunError, match="malformed"):
        make_optimizer("nevergrad:OnePlusOne", space, SMALL, 0).load_state_dict(broken_events)


# ---------------------------------------------------------------- nevergrad and optuna


@pytest.mark.parametrize(
    "spec", ["nevergrad:CMA", "nevergrad:OnePlusOne", "nevergrad:PSO", "optuna:TPE", "optuna:CMA-ES", "optuna:Random", "optuna:QMC"]
)
def test_external_optimizers_share_the_interface(space, spec):
    budget = Budget(8, 4, 3, 3, 3)
    opt = make_optimizer(spec, space, budget, 0)
    target = repaired(space, np.linspace(8.0, 16.0, 32), 9)
    f = log_distance(target)
    batches = run(opt, f)
    cands = flat(batches)
    assert opt.done and 0 < len(cands) <= budget.evaluations
    assert len(batches[0]) == 8 and all(len(b) <= budget.per_generation for b in batches[1:])
    assert [c.id for c in cands] == list(range(len(cands)))
    keys = [space.point_key(c.point) for c in cands]
    assert len(set(keys)) == len(keys)
    assert all(space.contains_point(c.point) and c.params["d_rcd"] == critical_index(space, c.lam) for c in cands)
    # generation 0 starts from the same seeds as the GA
    seeds = space.seed_points()
    assert [c.origin for c in batches[0][: len(seeds)]] == list(seeds)
    for c, p in zip(batches[0], seeds.values(), strict=False):
        assert space.point_key(c.point) == space.point_key(p)
    assert all(c.origin == spec for c in cands[len(seeds) :])
    assert opt.best().score == min(f(c.lam) for c in cands)


def test_external_determinism(space):
    f = log_distance(seed_lams(space)["seed:pi"])
    for spec in ("nevergrad:TwoPointsDE", "optuna:TPE"):
        a = run(make_optimizer(spec, space, Budget(8, 4, 2, 2, 2), 3), f)
        b = run(make_optimizer(spec, space, Budget(8, 4, 2, 2, 2), 3), f)
        same_batches(a, b)


def test_external_duplicates_are_told_not_evaluated(space):
    # a tiny space (one searched dimension, coarse grid) forces the library to propose known keys
    tiny = SearchSpace.from_spec(
        {"kind": "free", "lower": 1, "upper": 2, "step": 0.25, "seeds": ["pi"]}, RopeGeometry(2, 10000.0, 256), 512
    )
    opt = make_optimizer("optuna:Random", tiny, Budget(3, 2, 2, 2, 4), 0)
    cands = flat(run(opt, lambda lam: float(lam[0])))
    keys = [tiny.point_key(c.point) for c in cands]
    assert len(set(keys)) == len(keys) == 5  # only 5 grid points exist: 1, 1.25, ..., 2
    assert opt.best().score == 1.0
    # once every point is known a generation has no new candidate and the search ends early
    assert opt.done and opt.generation < 5 and opt.ask() == []
    ga = make_optimizer("ga", tiny, Budget(3, 2, 2, 2, 6), 0)
    keys = [tiny.point_key(c.point) for c in flat(run(ga, lambda lam: float(lam[0])))]
    assert len(set(keys)) == len(keys) == 5 and ga.done and ga.generation < 7


def test_refused_nevergrad_optimizers_fail_fast_and_never_hang():
    code = (
        "from longsearch.optimizers import make_optimizer\n"
        "from longsearch.space import SearchSpace\n"
        "from longsearch.rope import RopeGeometry\n"
        "from longsearch.errors import InputError\n"
        "sp = SearchSpace.load('longrope2', RopeGeometry(64, 10000.0, 256), 2048)\n"
        "for name in ['NGOpt', 'ngopt', 'MetaModel', 'NGOpt39', 'RFMetaModelDE', 'CMAMetaModel']:\n"
        "    try:\n"
        "        make_optimizer('nevergrad:' + name, sp, 'quick', 0)\n"
        "    except InputError as e:\n"
        "        assert 'refused' in str(e) or 'not supported' in str(e), e\n"
        "        print('refused', name)\n"
        "    else:\n"
        "        raise SystemExit('accepted ' + name)\n"
        "opt = make_optimizer('nevergrad:CMA', sp, 'quick', 0)\n"
        "opt.ask()\n"
        "print('done')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("refused") == 6 and proc.stdout.strip().endswith("done")


def test_n_mutated_seeds_caps_the_mutations_and_fills_with_random_points(tmp_path):
    p = tmp_path / "few.yaml"
    p.write_text("kind: longrope2\nseeds: [pi, yarn]\nn_mutated_seeds: 3\n")
    sp = SearchSpace.load(str(p), TESTBED, 2048)
    batch = GeneticOptimizer(sp, SMALL, seed=0).ask()
    origins = [c.origin for c in batch]
    n_seeds = len(sp.seed_points())
    assert origins == list(sp.seed_points()) + ["mutation"] * 3 + ["random"] * (SMALL.population - n_seeds - 3)
    assert all(sp.contains_point(c.point) for c in batch)


# ---------------------------------------------------------------- racing, budgets in evaluations, random search

N_DOCS = 8


def per_doc_objective(target: np.ndarray, m_target: float):
    """A score that is a mean over N_DOCS non-negative per-document terms, as the needle NLL is."""

    def docs(c) -> list[float]:
        base = float(np.sum((np.log(c.lam) - np.log(target)) ** 2)) + (c.m - m_target) ** 2
        return [base * (0.5 + k / N_DOCS) for k in range(N_DOCS)]

    return docs


def evaluate(c, docs, bar: float) -> Result:
    """Score document by document in a fixed order; stop once the mean cannot end below ``bar`` (the scorer's rule)."""
    values = docs(c)
    done: list[float] = []
    for v in values:
        if done and math.fsum(done) / N_DOCS >= bar:
            return Result(c, math.fsum(done) / N_DOCS, len(done) / N_DOCS, True)
        done.append(v)
    return Result(c, float(np.mean(values)), 1.0, False)


def drive(opt, docs, racing: bool):
    asked = []
    while not opt.done:
        batch = opt.ask()
        bar = opt.race_bar() if racing else math.inf
        asked.append([(c.id, c.lam.tolist(), c.m) for c in batch])
        opt.tell([evaluate(c, docs, bar) for c in batch])
    return asked


@pytest.mark.parametrize("spec", ["ga", "random"])
@pytest.mark.parametrize("space_name", ["hybrid", "longrope2"])
def test_racing_gives_the_same_search_for_fewer_token_forwards(spec, space_name):
    sp = SearchSpace.load(space_name, TESTBED, 2048)
    target = sp.seed_points()["seed:yarn" if space_name == "hybrid" else "seed:ntk+yarn"].lam.copy()
    target[:5] = 1.0
    docs = per_doc_objective(target, 1.4)
    full, raced = make_optimizer(spec, sp, SMALL, 3), make_optimizer(spec, sp, SMALL, 3)
    asked_full = drive(full, docs, racing=False)
    asked_raced = drive(raced, docs, racing=True)
    assert asked_full == asked_raced  # every generation asks exactly the same candidates
    assert full.best().candidate.id == raced.best().candidate.id and full.best().score == raced.best().score
    assert full.spent == SMALL.evaluations
    assert raced.spent < full.spent, (raced.spent, full.spent)


def test_censored_results_never_survive_or_become_best(space):
    opt = GeneticOptimizer(space, SMALL, seed=0)
    opt.tell([Result(c, 1.0 + c.id) for c in opt.ask()])
    bar = opt.race_bar()
    assert bar == 1.0 + max(p.candidate.id for p in opt.parents)
    batch = opt.ask()
    opt.tell([Result(c, bar, 0.25, True) for c in batch])  # a lower bound exactly at the bar loses the tie
    assert {p.candidate.id for p in opt.parents} == set(range(SMALL.parents))
    assert opt.best().candidate.id == 0 and opt.spent == SMALL.population + 0.25 * len(batch)


def test_budget_in_evaluations_counts_what_ran():
    b = resolve_budget("200evals")
    assert b.max_cost == 200 and b.population == 32
    for bad in ("10evals", "xevals", "-5evals"):
        with pytest.raises(InputError, match="budget"):
            resolve_budget(bad)
    sp = SearchSpace.load("hybrid", TESTBED, 2048)
    target = sp.seed_points()["seed:yarn"].lam
    docs = per_doc_objective(target, 1.2)
    for racing in (False, True):
        opt = GeneticOptimizer(sp, "200evals", seed=0)
        asked = drive(opt, docs, racing)
        assert opt.spent <= 200 + 1e-9 and opt.spent > 200 - b.per_generation - 1e-9  # stops before it could exceed
        if racing:
            assert sum(len(x) for x in asked) > 200  # the saving buys more candidates
        else:
            assert sum(len(x) for x in asked) == opt.spent


def test_random_search_starts_from_the_seeds_then_samples_uniformly():
    sp = SearchSpace.load("hybrid", TESTBED, 2048)
    opt = make_optimizer("random", sp, SMALL, 0)
    batch = opt.ask()
    seeds = list(sp.seed_points())
    assert [c.origin for c in batch[: len(seeds)]] == seeds and all(c.origin == "random" for c in batch[len(seeds) :])
    run(opt, lambda lam: float(np.sum(np.log(lam))))
    again = make_optimizer("random", sp, SMALL, 0)
    again.load_state_dict(json.loads(json.dumps(opt.state_dict())))
    assert again.done and again.best().candidate.id == opt.best().candidate.id


def test_failed_evaluations_are_never_parents_even_when_parents_are_few(space):
    opt = GeneticOptimizer(space, SMALL, seed=0)
    batch = opt.ask()
    opt.tell([Result(c, 1.0 if c.id < 2 else math.inf) for c in batch])  # only two finite scores
    assert [p.candidate.id for p in opt.parents] == [0, 1]
    assert opt.race_bar() == math.inf  # fewer parents than the budget's: nothing is raced
    children = opt.ask()
    assert children and all(set(c.parents or [0]) <= {0, 1} for c in children if c.origin != "random")


def test_every_optimizer_is_an_optimizer_with_the_shared_state():
    from longsearch.optimizers import Optimizer, make_optimizer

    space = SearchSpace.load("hybrid", RopeGeometry(16, 10000.0, 64), 256)
    for spec in ("ga", "random", "nevergrad:CMA", "optuna:TPE"):
        opt = make_optimizer(spec, space, "quick", 0)
        assert isinstance(opt, Optimizer) and opt.spec == spec
        header = opt.state_header()
        assert header["optimizer"] == spec and header["generation"] == 0 and header["n_freq"] == 8
        assert opt.state_dict()["optimizer"] == spec

    class Half(Optimizer):  # an optimizer that forgets part of the interface cannot be made
        def ask(self):
            return []

    with pytest.raises(TypeError, match="abstract"):
        Half(space, "quick", 0, "half")


# ---------------------------------------------------------------- failures: a state, not a score


def _fail_some(c: Candidate) -> bool:
    return c.id % 3 == 1


@pytest.mark.parametrize("spec", ["ga", "nevergrad:CMA", "nevergrad:TwoPointsDE", "optuna:TPE", "random"])
def test_failures_are_a_state_and_late_results_resume_exactly(space, spec):
    budget = Budget(8, 4, 2, 2, 4)
    f = log_distance(repaired(space, np.linspace(8.0, 16.0, 32), 9))

    def drive(opt, interrupt: bool) -> list[list[Candidate]]:
        """Candidates with id ≡ 1 (mod 3) fail; after generation 2 the first two failures are told late. With
        ``interrupt``, the state goes through JSON (a checkpoint and a resume) before and after the late tell."""
        batches = []
        while not opt.done:
            batch = opt.ask()
            batches.append(batch)
            opt.tell([Result(c, math.inf, failed=True) if _fail_some(c) else Result(c, f(c.lam)) for c in batch])
            if opt.generation == 2:
                if interrupt:
                    opt = _reloaded(opt, spec, budget)
                late = opt.failed()[:2]
                assert [c.id for c in late] == [c.id for c in flat(batches) if _fail_some(c)][:2]
                opt.tell_late([Result(c, f(c.lam)) for c in late])
                if interrupt:
                    opt = _reloaded(opt, spec, budget)
        return batches, opt

    a, opt_a = drive(make_optimizer(spec, space, budget, 5), interrupt=False)
    b, opt_b = drive(make_optimizer(spec, space, budget, 5), interrupt=True)
    same_batches(a, b)  # a resume between the failures and their late results asks exactly what an uninterrupted run does
    assert opt_a.state_dict() == opt_b.state_dict()
    cands = flat(a)
    failed_ids = [c.id for c in cands if _fail_some(c)]
    assert [c.id for c in opt_a.failed()] == failed_ids[2:]  # the late successes left the failed list
    recovered = {c.id for c in cands if c.id in failed_ids[:2]}
    scored = [c for c in cands if not _fail_some(c) or c.id in recovered]
    assert opt_a.best().score == min(f(c.lam) for c in scored)  # late results count for the best; failures never
    events = opt_a.state_dict().get("events")
    if events is not None:  # the libraries' history: no fake loss for a failure, a failed event instead
        assert max(e["tell"][1] for e in events if "tell" in e) < 100.0
        assert sum("fail" in e for e in events) >= len(failed_ids)
        assert [e["late"][1] for e in events if "late" in e] == [f(c.lam) for c in cands if c.id in recovered]


def _reloaded(opt, spec, budget):
    """The optimizer through a checkpoint: its state as strict JSON, loaded by a fresh one."""
    again = make_optimizer(spec, opt.space, budget, 5)
    again.load_state_dict(json.loads(json.dumps(opt.state_dict(), allow_nan=False)))
    return again


def test_ga_never_takes_a_failed_result_as_parent_whatever_its_score(space):
    opt = GeneticOptimizer(space, SMALL, seed=0)
    batch = opt.ask()
    # a failed result carries no score: even a "good" number with failed=True is a failure
    opt.tell([Result(c, 0.001, failed=True) if c.id < 3 else Result(c, float(c.id)) for c in batch])
    assert [c.id for c in opt.failed()] == [0, 1, 2]
    assert all(p.candidate.id >= 3 for p in opt.parents) and opt.best().candidate.id == 3
    for _ in range(3):
        children = opt.ask()
        assert all(not set(c.parents) & {0, 1, 2} for c in children)
        opt.tell([Result(c, 100.0 + c.id) for c in children])
    # told late, a recovered candidate joins the survivors and can become the best; a late failure stays failed
    opt.tell_late([Result(batch[0], 0.5), Result(batch[1], math.nan)])
    assert opt.best().candidate.id == 0 and opt.parents[0].candidate.id == 0
    assert [c.id for c in opt.failed()] == [1, 2]
    with pytest.raises(ValueError, match="not a failed one"):
        opt.tell_late([Result(batch[5], 1.0)])
    opt.ask()
    with pytest.raises(RuntimeError, match="pending"):
        opt.tell_late([Result(batch[2], 1.0)])


def test_optuna_is_told_failed_trials_and_nevergrad_no_loss(space):
    budget = Budget(8, 4, 2, 2, 2)
    opt = make_optimizer("optuna:TPE", space, budget, 0)
    batch = opt.ask()
    opt.tell([Result(c, math.inf, failed=True) if c.id < 2 else Result(c, 1.0 + c.id) for c in batch])
    from optuna.trial import TrialState

    states = [t.state for t in opt._impl.get_trials(deepcopy=False)]
    assert states.count(TrialState.FAIL) == 2 and all(t.value is None for t in opt._impl.get_trials() if t.state == TrialState.FAIL)
    opt.tell_late([Result(opt.failed()[0], 0.25)])  # a completed trial with the same parameters
    trials = opt._impl.get_trials(deepcopy=False)
    assert trials[-1].state == TrialState.COMPLETE and trials[-1].value == 0.25 and trials[-1].params == trials[0].params
    ng = make_optimizer("nevergrad:CMA", space, budget, 0)
    batch = ng.ask()
    ng.tell([Result(c, math.inf, failed=True) if c.id < 2 else Result(c, 1.0 + c.id) for c in batch])
    assert ng._impl.num_tell == len(batch) - 2  # the failures were told nothing (nevergrad has no failed state)
    ng.tell_late([Result(ng.failed()[0], 0.25)])
    assert ng._impl.num_tell == len(batch) - 1 and ng.best().score == 0.25


def test_a_result_cleans_its_score_once_for_every_optimizer(space):
    c = make_optimizer("ga", space, SMALL, 0).ask()[0]
    r = Result(c, np.float32(2.5))
    assert type(r.score) is float and r.score == 2.5 and not r.failed
    for bad in (float("nan"), -math.inf, None, "x"):
        r = Result(c, bad, censored=True)
        assert r.failed and r.score == math.inf and not r.censored
    assert Result(c, 1.0, failed=True).score == math.inf
