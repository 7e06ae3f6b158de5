"""The methods an evaluation compares, behind one protocol: each scores a needle set, the final segment, and one
forward for the cost probe, and describes itself for eval.json and report.md.

- :class:`RopeEval`: a RoPE-factor method — the original RoPE (``none``), a named baseline's schedule or searched
  factors — patched into the model's rotary module, as one serving mode applies it (:data:`SERVING_MODES`);
- :class:`TwoMapEval`: an attention-side method that is one attention function (Λ-window, ReRoPE, Leaky ReRoPE,
  Self-Extend; :func:`longsearch.attention.attention_method`) around the model's own forward;
- :class:`NbceEval`: NBCE, which runs the model once per chunk of the context.

>>> from longsearch.models import load_model                                    # doctest: +SKIP
>>> from longsearch.rope import schedule                                         # doctest: +SKIP
>>> lm = load_model(None)                                                        # doctest: +SKIP
>>> yarn = RopeEval("yarn", "baseline", schedule("yarn", lm.geometry, 1024), False, "rope.yarn")  # doctest: +SKIP
>>> yarn.needle_score(lm, needle_set).nll                                        # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from .attention import AttentionMethod, attention_method, nbce_logprobs, nbce_score, nbce_segment_nll
from .errors import InputError
from .factors import RopeFactors
from .models import LoadedModel, patched
from .needles import NeedleSample, NeedleSet, special_prefix
from .rope import Rescale, Schedule
from .scoring import Score, score

#: How an engine picks between short and long factors. ``per-forward``: transformers — each forward by its own
#: length (long factors once it exceeds the original window; dynamic NTK grows with it). ``long-everywhere``:
#: vLLM and llama.cpp — once at start-up, from the served context (``--max-model-len``, ``-c``): above the window,
#: the long factors (the λ for the target) at every length, a 50-token prompt included.
SERVING_MODES = ("per-forward", "long-everywhere")
#: A method that behaves the same in every mode (plain RoPE, static baselines, attention-side methods).
EVERY_MODE = "every"


class EvalMethod(Protocol):
    """One row of the evaluation. ``label`` names its columns and files (made unique by the caller)."""

    label: str

    def describe(self) -> dict[str, Any]:
        """Its row of eval.json's ``methods``: ``label``, ``kind``, ``dynamic``, ``source``, ``attention_factor``,
        ``target_length``, and (readers take them as optional) ``method`` (the label its serving modes share) and
        ``serving`` (a mode of :data:`SERVING_MODES`, or :data:`EVERY_MODE`)."""
        ...

    def needle_score(self, lm: LoadedModel, needle_set: NeedleSet) -> Score:
        """Answer-token NLL and greedy accuracy on a needle set."""
        ...

    def segment_nll(self, lm: LoadedModel, document: np.ndarray, prefix: int, length: int, tokens: int) -> float:
        """Mean NLL of ``document``'s last ``tokens`` tokens with a context of ``length`` positions (see :func:`segment_nll`)."""
        ...

    def forward(self, lm: LoadedModel, sample: NeedleSample) -> None:
        """One needle document through the model the way this method runs it: what the cost probe measures."""
        ...

    # Optional (run_eval looks them up with getattr): ``rope_at(length) -> Rescale`` — the RoPE the method applies
    # at that length, so that the cells of two methods applying the same one are computed once; ``cost_as`` — a
    # method whose cost probe stands for this one's (the same forward with other λ values).


@runtime_checkable
class Generates(Protocol):
    """A method that can also generate (the RULER-style tasks with several answers, :mod:`longsearch.ruler.suite`):
    :class:`RopeEval` and :class:`TwoMapEval`; NBCE pools one prediction per chunk and does not."""

    def generate_outputs(self, lm: LoadedModel, task_set: NeedleSet) -> list[list[int]]:
        """Greedy continuations of every sample's prompt, bounded by its ``max_new_tokens``, run the way this method
        runs the model (see :func:`longsearch.ruler.generate_outputs`)."""
        ...


@dataclass
class RopeEval:
    """A RoPE-factor method: ``spec`` (a schedule, a :class:`~longsearch.rope.Rescale` or
    :class:`~longsearch.factors.RopeFactors`, as :func:`~longsearch.models.apply_rope` takes it) patched in for each
    forward. ``kind``: ``"none"``, ``"baseline"`` or ``"factors"``. ``serving``: the mode of :data:`SERVING_MODES`
    whose behaviour ``spec`` is, or :data:`EVERY_MODE`; ``method``: the label the modes of one method share
    (default: ``label``); ``cost_as``: the row whose cost probe stands for this one's."""

    label: str
    kind: str
    spec: Schedule | Rescale | RopeFactors
    dynamic: bool
    source: str
    attention_factor: float | None = None
    target_length: int | None = None
    serving: str = EVERY_MODE
    method: str | None = None
    cost_as: Any = field(default=None, repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kind": self.kind,
            "dynamic": self.dynamic,
            "source": self.source,
            "attention_factor": self.attention_factor,
            "target_length": self.target_length,
            "method": self.method or self.label,
            "serving": self.serving,
        }

    def rope_at(self, length: int) -> Rescale:
        """λ and m this method applies to a forward of ``length`` tokens."""
        spec = self.spec
        if isinstance(spec, Rescale):
            return spec
        sched = spec.schedule() if isinstance(spec, RopeFactors) else spec
        return sched(int(length))

    def needle_score(self, lm: LoadedModel, needle_set: NeedleSet) -> Score:
        return score(lm, needle_set, self.spec)  # the spec carries its own target; the set its length

    def segment_nll(self, lm: LoadedModel, document: np.ndarray, prefix: int, length: int, tokens: int) -> float:
        with patched(lm.model, self.spec, self.target_length or length):
            return segment_nll(lm.model, document, prefix, length, tokens)

    def forward(self, lm: LoadedModel, sample: NeedleSample) -> None:
        with patched(lm.model, self.spec, self.target_length or len(sample.input_ids)):
            _forward(lm, sample)

    def generate_outputs(self, lm: LoadedModel, task_set: NeedleSet) -> list[list[int]]:
        from .ruler.generate import generate_outputs

        return generate_outputs(lm, task_set, self.spec)  # patched as needle_score patches it


@dataclass
class _AttentionSide:
    """What the attention-side methods share: an :class:`~longsearch.attention.AttentionMethod` with the model's
    own RoPE, described alike (kind ``"attention"``, neither dynamic nor an attention factor of its own)."""

    label: str
    method: AttentionMethod
    source: str
    target_length: int | None = None

    kind: ClassVar[str] = "attention"

    def describe(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kind": self.kind,
            "dynamic": False,
            "source": self.source,
            "attention_factor": None,
            "target_length": self.target_length,
            "method": self.label,
            "serving": EVERY_MODE,
        }


class TwoMapEval(_AttentionSide):
    """An attention function (two score maps merged by the method's window) around the model's own forward."""

    def needle_score(self, lm: LoadedModel, needle_set: NeedleSet) -> Score:
        with attention_method(lm.model, self.method):
            return score(lm, needle_set, None)

    def segment_nll(self, lm: LoadedModel, document: np.ndarray, prefix: int, length: int, tokens: int) -> float:
        with attention_method(lm.model, self.method):
            return segment_nll(lm.model, document, prefix, length, tokens)

    def forward(self, lm: LoadedModel, sample: NeedleSample) -> None:
        with attention_method(lm.model, self.method):
            _forward(lm, sample)

    def generate_outputs(self, lm: LoadedModel, task_set: NeedleSet) -> list[list[int]]:
        from .ruler.generate import generate_outputs

        with attention_method(lm.model, self.method):
            return generate_outputs(lm, task_set, None)


class NbceEval(_AttentionSide):
    """NBCE: the context cut into chunks that fit the window, each run with the question, the predictions pooled."""

    def needle_score(self, lm: LoadedModel, needle_set: NeedleSet) -> Score:
        return nbce_score(lm, needle_set, self.method)

    def segment_nll(self, lm: LoadedModel, document: np.ndarray, prefix: int, length: int, tokens: int) -> float:
        return nbce_segment_nll(lm, document, prefix, length, tokens, self.method)

    def forward(self, lm: LoadedModel, sample: NeedleSample) -> None:
        p = len(special_prefix(lm.tokenizer))
        q = int(sample.meta.get("question_start", sample.answer_start))
        ids = sample.input_ids
        nbce_logprobs(lm.model, ids[:p], ids[p:q], ids[q : sample.answer_end], lm.geometry.original_length, self.method)


def attention_eval(method: AttentionMethod, source: str, target_length: int | None = None) -> EvalMethod:
    """The eval method of an attention-side method: NBCE runs the model per chunk, the others are an attention function."""
    cls = NbceEval if method.name == "nbce" else TwoMapEval
    return cls(method.label, method, source, target_length)


def _forward(lm: LoadedModel, sample: NeedleSample) -> None:
    x = torch.as_tensor(sample.input_ids, dtype=torch.long, device=lm.device)[None]
    with torch.inference_mode():
        lm.model(input_ids=x, logits_to_keep=1, use_cache=False)


def segment_nll(model: Any, document: np.ndarray, prefix: int, length: int, tokens: int) -> float:
    """Mean NLL of the last ``tokens`` tokens of ``document`` given the ``length − tokens`` positions before them.

    The input is the document's special prefix (``prefix`` tokens, e.g. BOS) and then its last
    ``length − prefix`` tokens: exactly ``length`` positions that always end with the same tokens. Only the
    last ``tokens + 1`` positions go through the lm_head.
    """
    if not 0 < tokens < length - prefix or length > len(document):
        raise InputError(f"a final segment of {tokens} tokens does not fit a context of {length} tokens")
    ids = np.concatenate([document[:prefix], document[len(document) - (length - prefix) :]])
    device = next(model.parameters()).device
    x = torch.as_tensor(ids, dtype=torch.long, device=device)[None]
    with torch.inference_mode():
        try:
            logits = model(input_ids=x, logits_to_keep=tokens + 1, use_cache=False).logits
        except TypeError:  # a model whose forward has no logits_to_keep
            logits = model(input_ids=x, use_cache=False).logits
        logits = logits[0, -(tokens + 1) : -1].float()
        nll = torch.nn.functional.cross_entropy(logits, x[0, -tokens:], reduction="mean")
    return float(nll.item())


__all__ = ["EVERY_MODE", "SERVING_MODES", "EvalMethod", "Generates", "NbceEval", "RopeEval", "TwoMapEval", "attention_eval", "segment_nll"]
