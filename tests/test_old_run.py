"""A run directory written by the previous release (0.1.0, before the search loop was split into rooms and the
candidate got one shape) resumes with this one: the journal, config, space, needles and checkpoint it left are read,
and the resumed search ends with the same journal and best factors as that release's uninterrupted run.

The data in ``tests/data/old_run`` was made with longsearch 0.1.0 (commit fd4e408) on the shipped testbed:
``longsearch evolve --target 512 --samples 2 --budget quick --workers 1 --template passkey --no-signal-check``, once
to the end (``uninterrupted/``: its journal, best.json, final.json) and once SIGKILLed after the 14th journal line
(``killed/``: generation 0 checkpointed, 2 candidates of generation 1 journaled), via
``LONGSEARCH_FAULT=journal.jsonl:14:after:kill``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from longsearch.runs import RunStore

DATA = Path(__file__).parent / "data" / "old_run"


def _comparable(records) -> list[dict]:
    return sorted(
        (r.comparable() for r in records),
        key=lambda d: (d["kind"], d["id"] if d["id"] is not None else -1, d["name"] or ""),
    )


def test_a_run_of_the_previous_release_resumes_to_its_uninterrupted_result(tmp_path):
    from longsearch.evolve import EvolveOptions, run_evolve
    from longsearch.executors import InProcessPool

    run = tmp_path / "killed"
    shutil.copytree(DATA / "killed", run)
    before = RunStore(run).read_journal().records
    assert len(before) == 14 and max(r.generation for r in before) == 1
    with InProcessPool(None, 512, device="cpu", dtype="float32", threads=1) as pool:  # the testbed, no Ray
        run_evolve(EvolveOptions(resume=run), pool=pool)
    after = RunStore(run).read_journal().records
    expected = [json.loads(x) for x in (DATA / "uninterrupted" / "journal.jsonl").read_text().splitlines() if x.strip()]
    from longsearch.runs import JournalRecord

    want = _comparable([JournalRecord.from_dict(d) for d in expected])
    got = _comparable(after)
    assert [d["id"] for d in got] == [d["id"] for d in want]
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if k not in ("score", "per_sample")} == {
            k: v for k, v in w.items() if k not in ("score", "per_sample")
        }
        assert np.allclose(g["per_sample"], w["per_sample"], rtol=1e-5, atol=1e-6)
    best = json.loads((run / "best.json").read_text())
    ref = json.loads((DATA / "uninterrupted" / "best.json").read_text())
    assert best["long_factor"] == ref["long_factor"] and best["attention_factor"] == ref["attention_factor"]
    assert best["provenance"]["candidate"] == ref["provenance"]["candidate"]
    final = json.loads((run / "final.json").read_text())
    assert final["best"]["candidate"] == json.loads((DATA / "uninterrupted" / "final.json").read_text())["best"]["candidate"]
