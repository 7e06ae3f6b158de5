"""Scoring a task set: teacher-forced for one answer, greedy generation judged by the task's rule for several.

**Teacher-forced** (tasks with one answer): :func:`longsearch.scoring.score` as it is — the answer-token NLL, and
exact match when every answer token is the argmax at its position.

**Generation** (tasks with several answers): each prompt (``input_ids[:answer_start]``) is continued greedily for
at most its sample's ``max_new_tokens`` (the canonical answer's tokens and a quarter more, at least 4), stopping
at an end-of-sequence token; the text is judged against the sample's references by the task's match rule.
Samples are batched only with samples whose prompt has the same length, so no row is padded and every row sees
the positions, the attention and the RoPE schedule it would see alone (a schedule chooses λ from the forward's
longest position: a padded batch would give a short prompt the λ of a longer one). One forward over the prompt
with logits at its last position only, then one forward per new token with transformers' own KV cache — what
``model.generate(do_sample=False)`` does, which the tests check token for token.

>>> ts = build_task_set(lm.tokenizer, "niah-multivalue", 4096, 8)     # doctest: +SKIP
>>> r = score_task(lm, ts, "yarn")                                     # doctest: +SKIP
>>> r.score, r.per_sample, r.outputs[0]                                # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InputError, ModelError, NeedleError
from ..needles import NeedleSet
from ..scoring import unwrap_model
from .match import match_score
from .tasks import get_task, is_task_set

log = logging.getLogger(__name__)

#: prompts per forward: up to this many prompt tokens (at least one prompt); halved on out-of-memory
CPU_TOKENS_PER_BATCH = 8192
GPU_TOKENS_PER_BATCH = 32768
MODES = ("auto", "teacher-forced", "generate")


@dataclass
class TaskScore:
    """The score of one task set under one RoPE: ``score`` in [0, 1] (mean of ``per_sample``) and what it rests on.

    ``mode``: ``"teacher-forced"`` (``per_sample`` = exact match of the answer tokens) or ``"generate"``
    (``per_sample`` = the match rule on the greedy output; ``outputs`` holds the texts). ``nll``: the mean
    teacher-forced NLL of the canonical answer (NaN when not computed), a smooth signal for every task.
    """

    task: str
    length: int
    mode: str
    score: float
    per_sample: list[float]
    nll: float = math.nan
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    @property
    def n(self) -> int:
        return len(self.per_sample)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["nll"] = self.nll if math.isfinite(self.nll) else None
        return d


def _device(net: torch.nn.Module) -> torch.device:
    try:
        return next(net.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def eos_ids(net: torch.nn.Module, tokenizer: Any = None) -> set[int]:
    """The end-of-sequence ids generation stops at: the model's generation config, its config and the tokenizer's."""
    out: set[int] = set()
    for src in (getattr(net, "generation_config", None), getattr(net, "config", None), tokenizer):
        v = getattr(src, "eos_token_id", None) if src is not None else None
        if v is None:
            continue
        out.update(int(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
    return out


def _cache_kwarg(net: torch.nn.Module) -> str:
    """The forward's name for the KV cache: ``cache`` (transformers ≥ 5.2x) or ``past_key_values``."""
    params = inspect.signature(net.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(net: torch.nn.Module) -> Any:
    from transformers import DynamicCache

    config: Any = net.config  # nn.Module types its attributes as tensors or modules
    return DynamicCache(config=config)


def _greedy_batch(net: torch.nn.Module, ids: torch.Tensor, steps: int, eos: set[int], limits: Sequence[int]) -> list[list[int]]:
    """Greedy continuation of a batch of equal-length prompts: row b gets at most ``limits[b]`` tokens, stopping after
    an end-of-sequence token (which is not returned)."""
    cache = _new_cache(net)
    kw = {_cache_kwarg(net): cache, "use_cache": True, "logits_to_keep": 1}
    eos_t = torch.tensor(sorted(eos), dtype=torch.long, device=ids.device)
    limit_t = torch.tensor(list(limits), dtype=torch.long, device=ids.device)
    out = net(input_ids=ids, **kw)
    nxt = out.logits[:, -1].argmax(-1)
    produced = [nxt]
    done = torch.isin(nxt, eos_t) | (limit_t <= 1)
    for step in range(1, steps):
        if bool(done.all()):
            break
        out = net(input_ids=nxt[:, None], **kw)
        nxt = out.logits[:, -1].argmax(-1)
        produced.append(nxt)
        done = done | torch.isin(nxt, eos_t) | (limit_t <= step + 1)
    rows = torch.stack(produced, dim=1).cpu().tolist()
    result = []
    for b, row in enumerate(rows):
        row = row[: int(limits[b])]
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        result.append([int(t) for t in row[:cut]])
    return result


def greedy_generate(
    model: Any,
    prompts: Sequence[np.ndarray | Sequence[int]],
    max_new_tokens: int | Sequence[int],
    *,
    eos_token_ids: set[int] | None = None,
    batch_size: int | None = None,
) -> list[list[int]]:
    """The greedy continuation of each prompt (token ids, end-of-sequence excluded), at most ``max_new_tokens``
    (one number, or one per prompt).

    Prompts are grouped by length and each group goes through the model in batches of at most ``batch_size``
    (default: up to 8k prompt tokens per batch on a CPU, 32k on a GPU; halved on out-of-memory): rows are never
    padded. The RoPE in effect is the model's as it is (wrap the call in :func:`longsearch.models.patched`).
    """
    net, tokenizer = unwrap_model(model)
    device = _device(net)
    n = len(prompts)
    limits = [int(max_new_tokens)] * n if isinstance(max_new_tokens, (int, np.integer)) else [int(x) for x in max_new_tokens]
    if len(limits) != n:
        raise InputError(f"{len(limits)} generation budgets for {n} prompts")
    if any(x < 1 for x in limits):
        raise InputError("every prompt needs a generation budget of at least one token")
    eos = set(eos_token_ids) if eos_token_ids is not None else eos_ids(net, tokenizer)
    arrays = [np.asarray(p, dtype=np.int64) for p in prompts]
    groups: dict[int, list[int]] = {}
    for i, a in enumerate(arrays):
        if a.ndim != 1 or a.size == 0:
            raise InputError(f"prompt {i} is not a non-empty sequence of token ids")
        groups.setdefault(int(a.size), []).append(i)
    budget = GPU_TOKENS_PER_BATCH if device.type == "cuda" else CPU_TOKENS_PER_BATCH
    out: list[list[int]] = [[] for _ in range(n)]
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            for plen, members in sorted(groups.items()):
                bs = int(batch_size) if batch_size else max(1, budget // plen)
                i = 0
                while i < len(members):
                    chunk = members[i : i + bs]
                    ids = torch.from_numpy(np.stack([arrays[j] for j in chunk])).to(device)
                    lim = [limits[j] for j in chunk]
                    oom = False
                    try:
                        rows = _greedy_batch(net, ids, max(lim), eos, lim)
                    except Exception as e:
                        if not _is_oom(e):
                            raise
                        oom = True
                    if oom:
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                        if bs == 1:
                            raise ModelError(f"out of memory generating after a {plen}-token prompt on {device}")
                        bs = max(1, bs // 2)
                        continue
                    for j, row in zip(chunk, rows, strict=True):
                        out[j] = row
                    i += len(chunk)
    finally:
        if was_training:
            net.train()
    return out


def decode_outputs(tokenizer: Any, outputs: Sequence[Sequence[int]]) -> list[str]:
    """Generated token ids as text (special tokens dropped, spaces as generated)."""
    return [tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False) for ids in outputs]


def judge_outputs(task_set: NeedleSet, texts: Sequence[str]) -> list[float]:
    """Each sample's generated text judged against its references by the task's match rule (RULER's all / part)."""
    if not is_task_set(task_set):
        raise NeedleError("this needle set was not built by longsearch.ruler.build_task_set: it has no references to match")
    rule = str(task_set.meta.get("match", "all"))
    return [match_score(str(s.meta.get("match", rule)), t, s.meta["references"]) for s, t in zip(task_set.samples, texts, strict=True)]


def generate_outputs(
    model: Any,
    task_set: NeedleSet,
    spec: Any = None,
    *,
    target_length: int | None = None,
    batch_size: int | None = None,
) -> list[list[int]]:
    """Greedy continuations of every sample's prompt with ``spec`` patched into the RoPE (None: as loaded), each
    bounded by its sample's ``max_new_tokens``. ``target_length``: what a method name is resolved for (default: the
    set's length)."""
    from ..models import patched
    from ..scoring import check_compatible

    net, _ = unwrap_model(model)
    check_compatible(model, task_set)
    if not task_set.samples:
        raise NeedleError("the task set has no samples")
    prompts = [s.input_ids[: s.answer_start] for s in task_set.samples]
    limits = [int(s.meta.get("max_new_tokens", s.answer_end - s.answer_start)) for s in task_set.samples]
    target = int(target_length) if target_length is not None else task_set.length
    with patched(net, spec, target):
        return greedy_generate(model, prompts, limits, batch_size=batch_size)


def score_task(
    model: Any,
    task_set: NeedleSet,
    spec: Any = None,
    *,
    mode: str = "auto",
    nll: bool = True,
    target_length: int | None = None,
    batch_size: int | None = None,
) -> TaskScore:
    """Score ``task_set`` (from :func:`~longsearch.ruler.build_task_set`) on ``model`` with ``spec`` patched in.

    ``mode``: ``"auto"`` (the task's own: teacher-forced for one answer, generation for several),
    ``"teacher-forced"`` or ``"generate"``. ``nll``: with generation, also compute the canonical answer's
    teacher-forced NLL (one more forward per sample). The model needs a tokenizer (a LoadedModel) to generate.
    """
    from ..scoring import score

    if mode not in MODES:
        raise InputError(f"unknown scoring mode {mode!r}: use one of {', '.join(MODES)}")
    if not is_task_set(task_set):
        raise NeedleError("this needle set was not built by longsearch.ruler.build_task_set: it has no references to match")
    task = get_task(str(task_set.meta["task"]))
    use = task.scoring if mode == "auto" else mode
    t0 = time.perf_counter()
    if use == "teacher-forced":
        s = score(model, task_set, spec, target_length=target_length, batch_size=batch_size)
        per = [1.0 if c else 0.0 for c in s.per_sample_correct]
        return TaskScore(task.name, task_set.length, use, float(np.mean(per)), per, s.nll, [], time.perf_counter() - t0, s.error)
    _, tokenizer = unwrap_model(model)
    if tokenizer is None:
        raise ModelError("generation needs the model's tokenizer: pass a LoadedModel")
    ids = generate_outputs(model, task_set, spec, target_length=target_length, batch_size=batch_size)
    texts = decode_outputs(tokenizer, ids)
    per = judge_outputs(task_set, texts)
    value, error = math.nan, None
    if nll:
        s = score(model, task_set, spec, target_length=target_length, batch_size=batch_size)
        value, error = s.nll, s.error
    return TaskScore(task.name, task_set.length, use, float(np.mean(per)), per, value, texts, time.perf_counter() - t0, error)


__all__ = ["MODES", "TaskScore", "decode_outputs", "eos_ids", "generate_outputs", "greedy_generate", "judge_outputs", "score_task"]
