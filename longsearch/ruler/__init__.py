"""RULER-style tasks (Hsieh et al. 2024): generators at exact token lengths, and scoring that fits each task.

>>> from longsearch.tiny.tokenizer import build_tokenizer
>>> ts = build_task_set(build_tokenizer(), "niah-multivalue", length=1024, n_samples=2, seed=0)
>>> ts.samples[0].length, len(ts.samples[0].meta["references"]), ts.meta["match"]
(1024, 4, 'all')

A task set is a :class:`~longsearch.needles.NeedleSet` whose documents end with the canonical answer, so it is
saved and loaded as any needle set, :func:`longsearch.scoring.score` reads it (teacher-forced answer NLL and exact
match), and :func:`score_task` scores it the task's own way (:mod:`longsearch.ruler.generate`).

Tasks (name — the RULER task it stands for — definition):

- ``niah-single-1`` — niah_single_1 — one needle "One of the special magic numbers for {key} is: {7 digits}."
  in noise (the field's "The grass is green. …" sentences), asked for by key.
- ``niah-single-2`` — niah_single_2 — the same needle in prose.
- ``niah-single-3`` — niah_single_3 — the same in prose with a UUID as the value.
- ``niah-multikey-1`` — niah_multikey_1 — the asked needle in prose among 3 distractor needles with other keys.
- ``niah-multikey-2`` — niah_multikey_2 — the haystack is made only of needles with other keys.
- ``niah-multikey-3`` — niah_multikey_3 — as multikey-2 with UUID keys and UUID values.
- ``niah-multivalue`` — niah_multivalue — four needles with one key and four numbers; all four must be given.
- ``niah-multiquery`` — niah_multiquery — four keys with one number each, all asked at once.
- ``vt`` — vt — ``VAR A = 12345.`` then ``VAR B = VAR A.`` … (1 chain, 4 hops, 5-letter names) inserted into
  noise in order; answer: the 5 variables that hold the value.
- ``cwe`` — cwe — a list of real words where 10 occur 30 times each and the others 3 times; name the 10.
- ``fwe`` — fwe — made-up words with frequencies ∝ rank^−2 (Zipf, alpha 2); name the 3 most frequent.

Scoring: every task uses RULER's "all answers present" rule (the fraction of references found in the greedy
output, case-insensitive substrings: :mod:`longsearch.ruler.match`, which also has the "part" rule). Tasks with
one answer (the six ``niah-single-*`` / ``niah-multikey-*``) are scored teacher-forced by default — exact match of
the answer tokens, the scorer's own definition — and tasks with several answers by greedy generation.

**Differences from RULER** (besides not being RULER's code or data):

- *Length*: every document is exactly ``length`` tokens of the model's own tokenizer, counting the canonical answer
  that closes it; the prompt is the document without its answer, and generation may go on for the answer's
  length and a quarter more (RULER fills the input up to the length minus a fixed generation budget: 128 tokens
  for NIAH, 30 VT, 120 CWE, 50 FWE).
- *Haystack*: RULER's essays (Paul Graham) are replaced by the shipped public-domain prose (held-out KJV and The
  Devil's Dictionary by default); its noise sentences are the same kind of filler.
- *Keys*: adjective–noun pairs (``amber-falcon``) instead of random English words; UUIDs are drawn from the seed.
- *Prompts*: completion-style, for base models: the question ends with the start of the answer ("… The special
  magic number for X mentioned in the provided text is"), no chat template. The needle and the single-answer
  question are the project's ``magic-number`` template; the multi-answer, VT, CWE and FWE wordings are this
  project's own. RULER's one-shot examples for VT, CWE and FWE are left out (they cost the short windows
  longsearch tests most tokens). Where a window is too short for the instruction (a 256-token byte-level
  window), its last sentences are dropped, down to none; a task that still does not fit is refused.
- *Needle haystacks* (multikey-2/3): needles fill the body to the token; when no set of needles closes the gap
  exactly (UUID needles with a byte tokenizer all have the same length), a few noise tokens open the body
  (``meta["pad_tokens"]``).
- *Depths*: the first asked needle goes at the sample's depth (default: one in each of n equal slices), the
  others at uniform random depths; VT's statements go at random depths in chain order.
- *CWE*: the list is words separated by spaces (RULER numbers them), drawn from the shipped prose (RULER: a word
  list package); below about 600 words (short windows) the numbers of common words and occurrences are scaled
  down (common ≈ half of the list); where the pool would run short, uncommon words repeat more (always under a
  third of the common count); the last few words are single occurrences that close the length exactly.
- *FWE*: frequencies are the expected Zipf counts (RULER samples them), with the top 4 strictly decreasing so the
  answer is unique; made-up words are consonant–vowel syllables (RULER: random letter strings).
- *Answers*: references are drawn so that no other word of a document contains one, so the substring rule cannot
  credit a longer word; the canonical answer (teacher forcing) joins the references with ", " in a fixed order:
  document order (multivalue), question order (multiquery), chain order (VT), alphabetical (CWE), most frequent
  first (FWE).
- *Not built*: RULER's QA tasks (qa_1 on SQuAD, qa_2 on HotpotQA) need those data sets, which longsearch neither
  ships nor downloads (:data:`NOT_BUILT`).
"""

from __future__ import annotations

from .generate import MODES, TaskScore, decode_outputs, eos_ids, generate_outputs, greedy_generate, judge_outputs, score_task
from .match import MATCHERS, match_all, match_part, match_score
from .tasks import (
    MATCH_RULES,
    NOT_BUILT,
    SUITES,
    TASKS,
    Task,
    build_task_set,
    get_task,
    is_task_set,
    max_new_tokens,
    task_names,
    task_params,
)

__all__ = [
    "MATCHERS",
    "MATCH_RULES",
    "MODES",
    "NOT_BUILT",
    "SUITES",
    "TASKS",
    "Task",
    "TaskScore",
    "build_task_set",
    "decode_outputs",
    "eos_ids",
    "generate_outputs",
    "get_task",
    "greedy_generate",
    "is_task_set",
    "judge_outputs",
    "match_all",
    "match_part",
    "match_score",
    "max_new_tokens",
    "score_task",
    "task_names",
    "task_params",
]
