"""Needle-driven perplexity: the score of one RoPE rescale (λ, m) on one model — the search's inner loop.

The model reads each needle document with λ patched in and only the hidden states at the positions that
predict an answer token (``answer_start − 1 … answer_end − 2``) go through the lm_head, via transformers'
``logits_to_keep`` with a tensor of positions (so model-specific logit processing, e.g. soft-capping,
still applies). Nothing of size length × vocab is ever built; no KV cache; SDPA attention.

>>> s = score(loaded_model, needle_set, "yarn")              # doctest: +SKIP
>>> s.nll, s.ppl, s.accuracy                                 # doctest: +SKIP

Definitions: per-sample NLL = mean over that sample's answer tokens of −log p(token | prefix);
``nll`` = mean of the per-sample values (each document weighs the same); ``ppl`` = exp(nll);
a sample is *correct* when every answer token is the argmax at its position (teacher-forced greedy).
A non-finite loss makes the score +inf with the reason in ``error``: never a crash, never a silent zero.

Racing (``stop_at``): documents are scored in their fixed order, a few at a time, and scoring stops as soon
as the mean cannot end below ``stop_at`` — every per-sample NLL is ≥ 0, so after k of n documents the final
mean is at least (sum so far)/n. The score is then *censored*: ``nll`` is that lower bound (≥ ``stop_at``),
``n_scored`` says how many documents ran. A search that only needs to know whether a candidate beats a bar
(the GA: its worst parent) gets the same decisions for a fraction of the token-forwards.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .errors import ModelError, NeedleError
from .models import input_device
from .needles import NeedleSet

log = logging.getLogger(__name__)

#: Samples are batched up to this many tokens per forward (longer documents go one at a time); on a GPU an
#: out-of-memory error halves the batch and retries. Batching short documents saves per-forward overhead.
GPU_TOKENS_PER_BATCH = 32768
CPU_TOKENS_PER_BATCH = 8192
#: While racing, documents go through the model in chunks of at most this many tokens (at least one
#: document), so that a hopeless candidate stops after little work.
RACE_TOKENS_PER_CHUNK = 2048


@dataclass
class Score:
    """The score of one candidate: mean answer-token NLL (lower is better) and what it is made of."""

    nll: float
    per_sample: list[float]
    ppl: float
    accuracy: float
    per_sample_correct: list[bool]
    seconds: float
    error: str | None = None
    n_scored: int | None = None  # documents actually run (all of them unless censored)
    censored: bool = False  # stopped early: nll is a lower bound of the full mean

    @property
    def ok(self) -> bool:
        """True when the loss is finite (the score can be compared)."""
        return self.error is None and math.isfinite(self.nll)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (infinite values become the string "inf")."""
        d = asdict(self)
        d["nll"] = _json_float(self.nll)
        d["ppl"] = _json_float(self.ppl)
        d["per_sample"] = [_json_float(x) for x in self.per_sample]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Score:
        return cls(
            nll=float(d["nll"]),
            per_sample=[float(x) for x in d.get("per_sample", [])],
            ppl=float(d["ppl"]),
            accuracy=float(d.get("accuracy", 0.0)),
            per_sample_correct=[bool(x) for x in d.get("per_sample_correct", [])],
            seconds=float(d.get("seconds", 0.0)),
            error=d.get("error"),
            n_scored=d.get("n_scored"),
            censored=bool(d.get("censored", False)),
        )


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else ("-inf" if x < 0 else "nan"))


def unwrap_model(model: Any) -> tuple[torch.nn.Module, Any]:
    """(the transformers model, its tokenizer or None) from a LoadedModel or a PreTrainedModel."""
    if isinstance(model, torch.nn.Module):
        return model, None
    net = getattr(model, "model", None)
    if isinstance(net, torch.nn.Module):
        return net, getattr(model, "tokenizer", None)
    raise ModelError(f"cannot score with a {type(model).__name__}: pass a LoadedModel or a transformers causal LM")


def _vocab_size(net: Any) -> int | None:  # a transformers model (nn.Module types its methods as tensors)
    head = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor):
        return int(weight.shape[0])
    size = getattr(getattr(net, "config", None), "vocab_size", None)
    return int(size) if size else None


def _auto_batch_size(n: int, length: int, device: torch.device) -> int:
    budget = GPU_TOKENS_PER_BATCH if device.type == "cuda" else CPU_TOKENS_PER_BATCH
    return max(1, min(n, budget // max(1, length)))


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def check_compatible(model: Any, needle_set: NeedleSet, target_length: int | None = None) -> None:
    """Refuse a needle set built for another tokenizer or another length, or with ids the model cannot embed."""
    net, tokenizer = unwrap_model(model)
    needle_set.check(tokenizer, target_length)
    vocab = _vocab_size(net)
    if vocab is not None and needle_set.samples:
        top = max(int(s.input_ids.max()) for s in needle_set.samples)
        if top >= vocab:
            raise NeedleError(
                f"the needle set holds token id {top} but the model's vocabulary has {vocab} entries: it was built for "
                f"another tokenizer ({needle_set.tokenizer_name!r}); rebuild it for this model"
            )


def score(
    model: Any,
    needle_set: NeedleSet,
    spec: Any = None,
    *,
    target_length: int | None = None,
    batch_size: int | None = None,
    stop_at: float | None = None,
) -> Score:
    """Mean answer-token NLL of ``model`` on ``needle_set`` with ``spec`` patched into its RoPE.

    ``model``: a :class:`~longsearch.models.LoadedModel` (its tokenizer is checked against the set) or a
    transformers causal LM. ``spec``: anything :func:`longsearch.models.apply_rope` accepts (RopeFactors,
    Rescale, schedule, method name) or None for the RoPE the model was loaded with. ``target_length``: the
    length the search targets (method names are resolved for it; default: the set's length; a set of another
    length is refused). ``batch_size``: samples per forward (default: up to 8k tokens per forward on CPU,
    32k on a GPU, so long documents go one at a time; halved on out-of-memory). ``stop_at``: race against this
    bar (see the module docstring); None or +inf scores every document.
    """
    from .models import patched

    t0 = time.perf_counter()
    net, _ = unwrap_model(model)
    check_compatible(model, needle_set, target_length)
    if not needle_set.samples:
        raise NeedleError("the needle set has no samples: build one with --samples 1 or more")
    target = int(target_length) if target_length is not None else needle_set.length
    device = input_device(net)
    n = len(needle_set.samples)
    bs = int(batch_size) if batch_size else _auto_batch_size(n, needle_set.length, device)
    if bs < 1:
        raise NeedleError(f"batch size must be at least 1, got {batch_size}")
    racing = stop_at is not None and math.isfinite(stop_at)
    if racing:
        bs = max(1, min(bs, RACE_TOKENS_PER_CHUNK // max(1, needle_set.length)))
    if getattr(getattr(net, "config", None), "_attn_implementation", None) == "eager" and needle_set.length >= 8192:
        log.warning("the model uses eager attention: memory grows with length²; load it with attn_implementation='sdpa'")
    was_training = net.training
    if was_training:
        net.eval()
    try:
        with torch.inference_mode(), patched(net, spec, target):
            nll, correct = _score_all(net, needle_set, device, bs, stop_at if racing else None)
    finally:
        if was_training:
            net.train()
    errors = [f"sample {i}: non-finite answer-token loss ({v})" for i, v in enumerate(nll) if not math.isfinite(v)]
    per_sample = [v if math.isfinite(v) else math.inf for v in nll]
    censored = len(nll) < n
    if censored and not errors:  # stopped by the race: the mean over all n documents is at least this
        mean = float(np.sum(per_sample)) / n
        error = None
    elif errors:
        mean = math.inf
        error = "; ".join(errors[:3]) + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
        log.warning("score is +inf: %s", error)
    else:
        mean = float(np.mean(per_sample))
        error = None
    ppl = math.exp(mean) if mean < 700 else math.inf
    return Score(
        nll=mean,
        per_sample=per_sample,
        ppl=ppl,
        accuracy=float(np.mean(correct)),
        per_sample_correct=correct,
        seconds=time.perf_counter() - t0,
        error=error,
        n_scored=len(nll),
        censored=censored,
    )


def _score_all(
    net: torch.nn.Module, ns: NeedleSet, device: torch.device, bs: int, stop_at: float | None = None
) -> tuple[list[float], list[bool]]:
    nll: list[float] = []
    correct: list[bool] = []
    n = len(ns.samples)
    i = 0
    while i < n:
        if stop_at is not None and nll and math.fsum(nll) / n >= stop_at:
            break  # the mean over all n documents cannot end below the bar
        chunk = ns.samples[i : i + bs]
        oom = False
        try:
            a, c = _score_batch(net, chunk, device)
        except Exception as e:
            if not _is_oom(e):
                raise
            oom = True
        if oom:  # outside the except block, so that the failed forward's tensors are already released
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if bs == 1:
                raise ModelError(
                    f"out of memory scoring one {ns.length}-token document on {device}: use a shorter length, a GPU "
                    "with more memory, or a smaller dtype"
                )
            bs = max(1, bs // 2)
            log.info("out of memory with %d samples per forward; retrying with %d", len(chunk), bs)
            continue
        nll.extend(a)
        correct.extend(c)
        i += len(chunk)
    return nll, correct


def _score_batch(net: torch.nn.Module, samples: list, device: torch.device) -> tuple[list[float], list[bool]]:
    """One forward over a batch of equal-length samples; logits only at the answer-predicting positions.

    ``device`` is where the ids go (the input embedding's). The positions to keep stay on the CPU: the model
    indexes its last hidden states with them wherever those live (with accelerate's ``device_map`` the final
    norm and lm_head may sit on another device than the embedding; CPU indices are valid for a tensor on any
    device), and everything after the forward happens on the device the logits come back on."""
    ids = torch.from_numpy(np.stack([s.input_ids for s in samples]))
    positions = [torch.from_numpy(s.predict_positions) for s in samples]
    keep = torch.unique(torch.cat(positions))  # sorted: the union over the batch
    logits = _answer_logits(net, ids.to(device), keep)  # [B, len(keep), V]
    out = logits.device
    nll_t, ok_t = [], []
    for b, (s, pos) in enumerate(zip(samples, positions, strict=True)):
        sel = torch.searchsorted(keep, pos).to(out)
        rows = logits[b].index_select(0, sel).float()
        target = ids[b, s.answer_start : s.answer_end].to(out)
        logp = torch.log_softmax(rows, dim=-1).gather(-1, target[:, None]).squeeze(-1)
        nll_t.append(-logp.mean())
        ok_t.append((rows.argmax(-1) == target).all() & torch.isfinite(rows).all())
    values = torch.stack(nll_t).double().cpu().tolist()  # one host sync per batch
    oks = torch.stack(ok_t).cpu().tolist()
    return [float(v) for v in values], [bool(o) for o in oks]


def _answer_logits(net: Any, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits at positions ``keep`` (a CPU tensor) only: ``logits_to_keep`` as a tensor, or the decoder + lm_head by hand."""
    try:
        out = net(input_ids=ids, use_cache=False, logits_to_keep=keep)
        logits = out.logits
        if logits.shape[1] == keep.numel():
            return logits
        log.debug("the model ignored logits_to_keep (got %s logits); slicing", tuple(logits.shape))
        return logits[:, keep]
    except TypeError as e:
        if "logits_to_keep" not in str(e):
            raise
    decoder = net.get_decoder() if hasattr(net, "get_decoder") else None
    head = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else None
    if decoder is None or head is None:
        raise ModelError(f"{type(net).__name__} supports neither logits_to_keep nor a decoder + lm_head split: cannot score it")
    hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
    return head(hidden[:, keep.to(hidden.device)])


__all__ = ["CPU_TOKENS_PER_BATCH", "GPU_TOKENS_PER_BATCH", "Score", "check_compatible", "score"]
