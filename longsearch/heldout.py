"""Held-out scoring: the search's best factors, the baselines and the next best candidates on needles the search
never saw (another seed), and final.json — the table, how well the search score ranks candidates as the held-out
score does (Spearman), and the evaluations that failed for good.

>>> rows = heldout(run, pool, reporter, baseline_scores)      # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from .errors import NeedleError, RunError
from .executors import Executor, ScoreOutcome, ScoreTask
from .loop import MAX_FAILED_ATTEMPTS, baseline_factors, chosen, json_float, validation_scores
from .mix import NeedleMix, load_needle_mix
from .plan import HELDOUT_SEED_OFFSET
from .rope import Rescale
from .runs import FINAL, JournalContents, JournalRecord
from .runstart import PreparedRun, search_needles

#: Held-out scoring re-scores this many of the best distinct candidates, to measure how well the search's score
#: ranks candidates the way the held-out score does.
RANK_CANDIDATES = 8


@dataclass
class HeldoutRow:
    name: str
    nll: float
    accuracy: float | None
    search_nll: float | None
    error: str | None = None
    per_length: list[dict[str, Any]] | None = None  # per served length: length, nll, accuracy (long factors at each)


@dataclass(frozen=True)
class HeldoutEntry:
    """A held-out task's reference: a row name (``longsearch``, a baseline, ``c17``), its factors and its search score."""

    name: str
    rescale: Rescale
    search_nll: float | None


class HeldoutReporter(Protocol):
    def heldout_started(self, to_evaluate: int) -> None: ...

    def heldout_evaluated(self, name: str, outcome: ScoreOutcome) -> None: ...


def heldout(run: PreparedRun, pool: Executor, reporter: HeldoutReporter, baseline_scores: dict[str, float]) -> list[HeldoutRow]:
    """Score the best factors, PI / NTK / YaRN / none and the next best candidates on a held-out needle set (the
    search's templates and depths, seed + 1000); write final.json with the table, how well the search score ranks
    candidates as the held-out score does (Spearman), and the evaluations that failed for good."""
    store, cfg = run.store, run.config
    journal = store.read_journal()
    choice = chosen(run, journal.candidates(), journal.validations())
    if choice is None:
        return []
    best, vrec = choice
    failed = failed_evaluations(journal)
    kept = _kept_rows(run, int(best.candidate.id), failed)
    if kept is not None:  # a finished run resumed again: its table is already there
        return kept
    hseed = cfg.heldout_seed if cfg.heldout_seed is not None else cfg.seed + HELDOUT_SEED_OFFSET
    needles = _heldout_needles(run, hseed)
    pool.set_needles("heldout", needles)
    entries = [HeldoutEntry("longsearch", best.candidate.rescale, best.score)]
    for name, f in baseline_factors(run.geometry, cfg.target_length).items():
        entries.append(HeldoutEntry(name, f.long, baseline_scores.get(name)))
    for rec in _next_best(journal, best.candidate.id, RANK_CANDIDATES - 1):
        entries.append(HeldoutEntry(f"c{rec.id}", Rescale(np.asarray(rec.lam), float(rec.m)), rec.score))
    tasks = [ScoreTask(e, e.rescale, needles="heldout") for e in entries]
    reporter.heldout_started(len(tasks))
    outcomes: dict[str, ScoreOutcome] = {}
    for o in pool.map_unordered(tasks):
        outcomes[o.ref.name] = o
        reporter.heldout_evaluated(o.ref.name, o)
    by_name = {e.name: e for e in entries}
    shown = ["longsearch", *baseline_factors(run.geometry, cfg.target_length)]
    rows = [
        HeldoutRow(n, outcomes[n].nll, outcomes[n].accuracy, by_name[n].search_nll, outcomes[n].error, _per_length(outcomes[n]))
        for n in shown
    ]
    pairs: list[tuple[str, float, float]] = []
    for e in entries:
        a, b = e.search_nll, outcomes[e.name].nll
        if e.name != "none" and a is not None and math.isfinite(a) and math.isfinite(b):
            pairs.append((e.name, float(a), float(b)))
    rho = spearman([a for _, a, _ in pairs], [b for _, _, b in pairs]) if len(pairs) >= 3 else None
    store.write_json(
        FINAL,
        {
            "kind": "longsearch.final",
            "needles": {
                "seed": hseed,
                "samples": cfg.samples,
                "length": cfg.target_length,
                "template": needles.template,
                "depths": cfg.depths,
            },
            "best": {"candidate": int(best.candidate.id), "search_nll": json_float(best.score)},
            "choice": _choice(run, best, vrec, journal, outcomes["longsearch"]),
            "rows": [{k: json_float(v) for k, v in asdict(r).items()} for r in rows],
            "rank_agreement": {
                "spearman": rho,
                "n": len(pairs),
                "names": [n for n, _, _ in pairs],
                "search_nll": [a for _, a, _ in pairs],
                "heldout_nll": [b for _, _, b in pairs],
            },
            "failed": failed,
        },
    )
    return rows


def _per_length(o: ScoreOutcome) -> list[dict[str, Any]] | None:
    if not o.per_length:
        return None
    return [{"length": int(p["length"]), "nll": json_float(float(p["nll"])), "accuracy": p.get("accuracy")} for p in o.per_length]


def _choice(run: PreparedRun, best: Any, vrec: JournalRecord | None, journal: JournalContents, held: ScoreOutcome) -> dict[str, Any]:
    """The chosen factors' scores on the three needle families side by side, and the gaps between them: what the
    search fitted (search), what chose them (validation: another haystack and framing), what neither saw (held-out)."""
    rec = journal.candidates().get(int(best.candidate.id))
    search_acc = None if rec is None else rec.accuracy
    out: dict[str, Any] = {
        "candidate": int(best.candidate.id),
        "chosen_by": "validation" if vrec is not None else "search score",
        "search": {"nll": json_float(float(best.score)), "accuracy": search_acc},
        "validation": None
        if vrec is None
        else {"nll": json_float(float(vrec.score)), "accuracy": vrec.accuracy, "generation": vrec.generation},
        "heldout": {"nll": json_float(held.nll), "accuracy": held.accuracy},
        "validated": [
            {"generation": v.generation, "candidate": v.id, "validation_nll": v.score, "accuracy": v.accuracy}
            for v in validation_scores(run, journal.validations())
        ],
    }
    gaps: dict[str, Any] = {}
    if search_acc is not None and held.accuracy is not None:
        gaps["search_minus_heldout_accuracy"] = round(float(search_acc) - float(held.accuracy), 4)
    if vrec is not None and vrec.accuracy is not None and held.accuracy is not None:
        gaps["validation_minus_heldout_accuracy"] = round(float(vrec.accuracy) - float(held.accuracy), 4)
    if search_acc is not None and vrec is not None and vrec.accuracy is not None:
        gaps["search_minus_validation_accuracy"] = round(float(search_acc) - float(vrec.accuracy), 4)
    out["gaps"] = gaps
    return out


def _kept_rows(run: PreparedRun, best_id: int, failed: list[dict[str, Any]]) -> list[HeldoutRow] | None:
    """final.json's rows when it was written for this best candidate and these failures (else None)."""
    store = run.store
    if not store.file(FINAL).exists():
        return None
    try:
        final = store.read_json(FINAL)
        if final.get("best", {}).get("candidate") != best_id or final.get("failed") != failed:
            return None
        return [
            HeldoutRow(
                r["name"],
                math.inf if r.get("nll") is None else float(r["nll"]),
                r.get("accuracy"),
                r.get("search_nll"),
                r.get("error"),
                r.get("per_length"),
            )
            for r in final["rows"]
        ]
    except (RunError, KeyError, TypeError, AttributeError):
        return None  # rewritten


def _heldout_needles(run: PreparedRun, seed: int) -> NeedleMix:
    """The held-out mix saved in the run (built and saved the first time): the search's served lengths and templates,
    another seed."""
    cfg, hdir = run.config, run.store.heldout_needles_dir
    if hdir.is_dir():
        try:
            return load_needle_mix(hdir, tokenizer=run.tokenizer, length=cfg.target_length)
        except (NeedleError, RunError):
            pass
    needles = search_needles(run.tokenizer, cfg, seed, cfg.template or "magic-number", cfg.depths)
    needles.save(hdir)
    return needles


def failed_evaluations(journal: JournalContents) -> list[dict[str, Any]]:
    """The candidates and baselines whose last evaluation failed: kind, id or name, the reason, how many times it
    failed, and whether a resume evaluates it again (fewer than :data:`MAX_FAILED_ATTEMPTS` failures)."""
    failures = journal.failures()
    out: list[dict[str, Any]] = []
    keyed: list[tuple[tuple[str, Any], JournalRecord]] = [(("candidate", r.id), r) for r in journal.candidates().values()]
    keyed += [(("baseline", r.name), r) for r in journal.baselines().values()]
    for key, r in keyed:
        if r.failed:
            n = failures.get(key, 1)
            entry: dict[str, Any] = {"kind": key[0], "id" if key[0] == "candidate" else "name": key[1]}
            out.append({**entry, "error": r.error, "attempts": n, "retried_on_resume": n < MAX_FAILED_ATTEMPTS})
    return sorted(out, key=lambda d: (d["kind"] != "candidate", d.get("id") or 0, d.get("name") or ""))


def _next_best(journal: JournalContents, best_id: int, k: int) -> list[JournalRecord]:
    """The k best fully-scored candidates after the best one (distinct λ and m)."""
    seen: set[tuple] = set()
    out: list[JournalRecord] = []
    for r in sorted(journal.candidates().values(), key=lambda r: (r.score, r.id or 0)):
        if r.id == best_id or r.censored or r.failed or not math.isfinite(r.score):
            continue
        key = (tuple(np.round(r.lam, 4)), round(float(r.m), 4))
        if key in seen:
            continue
        seen.add(key)
        out.append(r)
        if len(out) == k:
            break
    return out


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when a side is constant or too short."""
    if len(a) != len(b) or len(a) < 2:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    if va == 0 or vb == 0:
        return None
    return cov / math.sqrt(va * vb)


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


__all__ = ["RANK_CANDIDATES", "HeldoutEntry", "HeldoutRow", "failed_evaluations", "heldout", "spearman"]
