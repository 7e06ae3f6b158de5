"""Training-free extensions that change attention, not frequencies — eval baselines beside the rescale vectors.

* ``lambda-window`` (LM-Infinite's Λ-shaped mask): a query sees the first ``n_global`` tokens and the last
  ``n_local``; distances to the global tokens beyond the local window count as ``n_local − 1``, the largest a
  window of ``n_local`` tokens holds.
* ``rerope`` (ReRoPE): relative positions exact below ``window``, clamped to ``window`` beyond it.
* ``leaky-rerope`` (Leaky ReRoPE): exact below ``window``, beyond it ``window + (d − window) / k``.
* ``self-extend`` (Self-Extend): exact below the neighbour window ``window_size``; beyond it the grouped
  positions ``⌊i / group_size⌋ + window_size − ⌊window_size / group_size⌋`` for the query and
  ``⌊j / group_size⌋`` for the key.
* ``nbce`` (naive Bayes context extension): the context is cut into chunks that fit the window with the
  question; each chunk (and the question alone) is scored separately and the next-token log-probabilities
  are pooled: ``(1 + beta) · pool_k log p(t | chunk_k) − beta · log p(t)``, ``pooling`` = ``min-entropy``
  (the chunk whose prediction has the least entropy, per token) or ``average``.

The first four are one attention function registered in transformers' ``AttentionInterface`` and selected
with ``model.set_attn_implementation``: it receives the queries and keys already rotated by the model's RoPE
at the positions transformers passes, and builds two score maps — exact positions (the queries and keys as
received), and the method's far positions (their rotation undone and redone at the far positions) — merged by
the window mask (the second map is what ReRoPE and Self-Extend call their extra attention pass). The rotation
undone is the one the forward applied: a hook on the model-level rotary module reads, after each of its
forwards, the frequencies it used (a scaled ``rope_type`` — linear, llama3, yarn, longrope, dynamic, recomputed
per forward for the last two —, or longsearch's patched factors) and checks that they reproduce the cos/sin it
returned. Its attention factor m needs nothing: a rotation undone and redone keeps the m each query and key
carries, so every score keeps the model's m². Layers whose RoPE is not the global one (Gemma3's local layers,
with a local base) are left to the default attention; layers with only a sliding mask (Mistral, Gemma2's local
layers, which share the global RoPE) get the method under that mask. NBCE is not attention at all:
:func:`nbce_logprobs` runs the model once per chunk. None of them is a set of RoPE factors, so none can be
exported to a serving tool.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import InputError, ModelError
from .rope import RopeGeometry

ATTENTION_METHODS = ("lambda-window", "rerope", "leaky-rerope", "self-extend", "nbce")
_PARAMS: dict[str, tuple[str, ...]] = {
    "lambda-window": ("n_global", "n_local"),
    "rerope": ("window",),
    "leaky-rerope": ("window", "k"),
    "self-extend": ("group_size", "window_size"),
    "nbce": ("beta", "pooling"),
}
NBCE_POOLING = ("min-entropy", "average")
REGISTERED_NAME = "longsearch_two_map"
#: bytes the score maps of one block of queries may take (``--attention-memory``): the block size follows from it
DEFAULT_BLOCK_MEMORY = 2 << 30
#: fp32 [batch, heads, queries, keys] maps alive at once in a block (exact and far scores, then the merged scores and
#: their softmax), plus two [batch, 1, queries, keys] ones (the distances, the masks)
_MAPS_PER_HEAD, _MAPS_SHARED = 3, 2


@dataclass
class AttentionMethod:
    """An attention-side method with its parameters (named as their authors name them)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    geometry: RopeGeometry | None = None
    block_memory: int = DEFAULT_BLOCK_MEMORY  # bytes of score maps per block of queries (not a parameter of the method)

    @property
    def label(self) -> str:
        inner = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({inner})"

    def describe(self) -> str:
        return {
            "lambda-window": "LM-Infinite Λ-shaped window",
            "rerope": "ReRoPE",
            "leaky-rerope": "Leaky ReRoPE",
            "self-extend": "Self-Extend",
            "nbce": "naive Bayes context extension",
        }[self.name]


def _number(method: str, key: str, value: Any, kind: type) -> Any:
    try:
        v = kind(value)
    except (TypeError, ValueError):
        raise InputError(f"{method}: {key} must be a number, got {value!r}") from None
    if not (math.isfinite(float(v)) and v > 0) and not (key == "beta" and v == 0):
        raise InputError(f"{method}: {key} must be positive, got {value!r}")
    return v


def make_attention_method(name: str, g: RopeGeometry, target_length: int, **given: Any) -> AttentionMethod:
    """A method with every parameter set: the given ones (checked), the rest derived from the window and target.

    Defaults: ``rerope`` window = half the original window; ``leaky-rerope`` the same window and the
    smallest k that keeps ``target_length`` within the original window; ``self-extend`` window_size = half the
    window and the smallest group size that does the same; ``lambda-window`` n_global = 10, n_local = the
    window; ``nbce`` beta = 0.25, pooling = min-entropy (its author's settings).
    """
    if name not in _PARAMS:
        raise InputError(f"unknown attention baseline {name!r}: choose from {', '.join(ATTENTION_METHODS)}")
    unknown = sorted(set(given) - set(_PARAMS[name]))
    if unknown:
        raise InputError(f"{name} has no parameter {', '.join(unknown)}: it takes {', '.join(_PARAMS[name])}")
    L, T = g.original_length, int(target_length)
    p: dict[str, Any] = {}
    if name == "lambda-window":
        p["n_global"] = _number(name, "n_global", given.get("n_global", 10), int)
        p["n_local"] = _number(name, "n_local", given.get("n_local", L), int)
        if p["n_local"] > L:
            raise InputError(
                f"lambda-window: n_local {p['n_local']} exceeds the original window ({L}): distances beyond it were never trained"
            )
    elif name in ("rerope", "leaky-rerope"):
        p["window"] = _number(name, "window", given.get("window", L // 2), int)
        if p["window"] >= L:
            raise InputError(f"{name}: window {p['window']} must be below the original window ({L})")
        if name == "leaky-rerope":
            default_k = max(1.0, (T - p["window"]) / max(1, L - 1 - p["window"]))
            p["k"] = _number(name, "k", given.get("k", round(math.ceil(default_k * 100) / 100, 2)), float)
    elif name == "self-extend":
        p["window_size"] = _number(name, "window_size", given.get("window_size", L // 2), int)
        if p["window_size"] >= L:
            raise InputError(f"self-extend: window_size {p['window_size']} must be below the original window ({L})")
        default_g = max(1, math.ceil((T - p["window_size"]) / max(1, L - 1 - p["window_size"])))
        p["group_size"] = _number(name, "group_size", given.get("group_size", default_g), int)
    else:
        p["beta"] = _number(name, "beta", given.get("beta", 0.25), float)
        pooling = str(given.get("pooling", "min-entropy"))
        if pooling not in NBCE_POOLING:
            raise InputError(f"nbce: pooling must be one of {', '.join(NBCE_POOLING)}, got {pooling!r}")
        p["pooling"] = pooling
    return AttentionMethod(name, p, g)


def query_block(block_memory: int, batch: int, heads: int, keys: int) -> int:
    """Queries per block so that the score maps of a block take at most ``block_memory`` bytes (at least 1)."""
    per_query = (_MAPS_PER_HEAD * heads + _MAPS_SHARED) * batch * keys * 4
    return max(1, int(block_memory) // max(1, per_query))


def parse_memory(text: str) -> int:
    """``"2GiB"``, ``"512MiB"``, ``"2g"``, ``"1500000000"`` -> bytes (binary units; k, m, g alone mean KiB, MiB, GiB)."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
    if not m:
        raise InputError(f"cannot read the memory size {text!r}: give bytes or a number with KiB, MiB, GiB (e.g. 2GiB)")
    value = float(m.group(1)) * 1024 ** "_kmgt".index(m.group(2) or "_")
    if value < 1:
        raise InputError(f"the memory size must be at least 1 byte, got {text!r}")
    return int(value)


def parse_attention_baseline(text: str) -> tuple[str, dict[str, str]]:
    """``"self-extend:group_size=8:window_size=64"`` -> (name, {key: value})."""
    name, *rest = text.split(":")
    params = {}
    for item in rest:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InputError(f"{text!r}: parameters are written name:key=value:key=value, e.g. self-extend:group_size=8")
        params[key.strip()] = value.strip()
    return name.strip(), params


# ---------------------------------------------------------------- positions of the two maps


def far_positions(method: AttentionMethod, q_pos: torch.Tensor, k_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(query positions, key positions, frequency divisor) of the far map: its relative position is q − k."""
    p = method.params
    if method.name == "rerope":
        return torch.full_like(q_pos, float(p["window"])), torch.zeros_like(k_pos), 1.0
    if method.name == "leaky-rerope":
        w, k = float(p["window"]), float(p["k"])
        return q_pos + w * (k - 1.0), k_pos, k  # ((i + w(k−1)) − j) / k = w + (d − w) / k
    if method.name == "self-extend":
        gsz, w = int(p["group_size"]), int(p["window_size"])
        return torch.div(q_pos, gsz, rounding_mode="floor") + (w - w // gsz), torch.div(k_pos, gsz, rounding_mode="floor"), 1.0
    if method.name == "lambda-window":
        return torch.full_like(q_pos, float(p["n_local"] - 1)), torch.zeros_like(k_pos), 1.0
    raise ValueError(method.name)


def exact_window(method: AttentionMethod) -> int:
    """Relative distances below this use exact positions."""
    p = method.params
    for key in ("window", "window_size", "n_local"):
        if key in p:
            return int(p[key])
    raise ValueError(f"{method.name} has no exact window")


def relative_distances(method: AttentionMethod, n: int) -> np.ndarray:
    """The relative position each (query, key) pair of an n-token sequence sees (−1 = masked): the definition,
    written pair by pair, for the tests' slow reference."""
    out = np.full((n, n), -1.0)
    w = exact_window(method)
    p = method.params
    for i in range(n):
        for j in range(i + 1):
            d = i - j
            if d < w:
                out[i, j] = d
            elif method.name == "rerope":
                out[i, j] = p["window"]
            elif method.name == "leaky-rerope":
                out[i, j] = p["window"] + (d - p["window"]) / p["k"]
            elif method.name == "self-extend":
                gsz, ws = p["group_size"], p["window_size"]
                out[i, j] = i // gsz + ws - ws // gsz - j // gsz
            elif method.name == "lambda-window":
                out[i, j] = p["n_local"] - 1 if j < p["n_global"] else -1
    return out


# ---------------------------------------------------------------- the attention function


_UNSUPPORTED = "use a RoPE baseline (pi, ntk, yarn) or nbce for this model instead, or report its model type"
_CHECKED_MAX = 4096  # rotary forwards whose cos/sin check is remembered (decoding adds one per position)


@dataclass
class _Active:
    """What the attention function needs while a method is on: the method, the layers left to the default
    attention, per rotary layer type (None: a module without types) the frequencies and positions of the
    last rotary forward, and the rotary forwards whose cos/sin were already checked (see :func:`_rotation_hook`)."""

    method: AttentionMethod
    local_layers: frozenset[int]
    rotations: dict[str | None, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    checked: set[tuple[Any, ...]] = field(default_factory=set)


_ACTIVE: contextvars.ContextVar[_Active | None] = contextvars.ContextVar("longsearch_attention", default=None)


def _used_rotation(module: Any, position_ids: torch.Tensor, layer_type: str | None, device: torch.device) -> tuple[torch.Tensor, float]:
    """(inv_freq, attention factor) a model-level rotary module used in the forward that just ran."""
    from .models import LongsearchRotaryEmbedding

    if isinstance(module, LongsearchRotaryEmbedding):
        if layer_type is not None and layer_type != module.patched_type:  # delegated to the original module
            return _used_rotation(module.original, position_ids, layer_type, device)
        return module.inv_freq_and_m(position_ids, device)
    prefix = "" if layer_type is None else f"{layer_type}_"
    inv_freq, m = getattr(module, f"{prefix}inv_freq", None), getattr(module, f"{prefix}attention_scaling", None)
    if not isinstance(inv_freq, torch.Tensor) or not isinstance(m, (int, float)):
        raise ModelError(
            f"{type(module).__name__} has no {prefix}inv_freq and {prefix}attention_scaling: the attention baselines cannot read "
            f"its RoPE; {_UNSUPPORTED}"
        )
    return inv_freq, float(m)


def _check_key(
    module: Any, layer_type: str | None, position_ids: torch.Tensor, inv_freq: torch.Tensor, m: float, cos: torch.Tensor
) -> tuple[Any, ...]:
    """What a rotary forward's cos/sin check depends on: the module and layer type, the positions' shape and
    each row's first and last position, the frequencies and attention factor it used (a dynamic or longrope
    RoPE changes them with the length), and the output's dtype and device. One small copy to the host."""
    ends = position_ids.detach()[..., [0, -1]] if position_ids.shape[-1] else position_ids.detach()
    ends = ends.reshape(-1).to(torch.float64)
    values = torch.cat((inv_freq.detach().reshape(-1).to(device=ends.device, dtype=torch.float64), ends)).cpu().numpy()
    return (id(module), layer_type, tuple(position_ids.shape), values.tobytes(), float(m), cos.dtype, cos.device)


def _rotation_hook(active: _Active) -> Any:
    """A forward hook for a model-level rotary module: records the frequencies its forward used (read after it,
    so transformers' per-forward recomputation for dynamic and longrope types is in), checked against its cos/sin
    the first time each module, layer type, position set and frequencies appear (the check rebuilds cos/sin in
    full: once is enough for forwards that repeat them, as every scoring forward at one length does)."""

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        x = args[0] if args else kwargs["x"]
        position_ids = args[1] if len(args) > 1 else kwargs["position_ids"]
        layer_type = args[2] if len(args) > 2 else kwargs.get("layer_type")
        inv_freq, m = _used_rotation(module, position_ids, layer_type, x.device)
        cos, sin = output
        key = _check_key(module, layer_type, position_ids, inv_freq, m, cos)
        if key not in active.checked:
            freqs = position_ids[..., None].float() * inv_freq.to(device=x.device, dtype=torch.float)
            emb = torch.cat((freqs, freqs), dim=-1)
            tol = 4 * torch.finfo(cos.dtype).eps * max(1.0, abs(m))
            if emb.shape != cos.shape or not (
                torch.allclose((emb.cos() * m).to(cos.dtype).float(), cos.float(), atol=tol, rtol=0)
                and torch.allclose((emb.sin() * m).to(sin.dtype).float(), sin.float(), atol=tol, rtol=0)
            ):
                raise ModelError(
                    f"{type(module).__name__} returns cos/sin its inv_freq and attention factor do not reproduce: the attention "
                    f"baselines cannot undo its RoPE; {_UNSUPPORTED}"
                )
            if len(active.checked) >= _CHECKED_MAX:
                active.checked.clear()
            active.checked.add(key)
        active.rotations[layer_type] = (inv_freq.detach().to(torch.float32), position_ids.detach())

    return hook


def _rotate(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """RoPE (rotate-half convention, as every architecture longsearch patches) on the first rotary dims of x.

    x [B, H, L, D]; pos [B or 1, L] (float); inv_freq [rd/2]. ``sign = −1`` undoes a rotation.
    """
    rd = inv_freq.numel() * 2
    freqs = pos[..., None].to(torch.float32) * inv_freq.to(torch.float32)
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, L, rd]
    cos, sin = emb.cos(), emb.sin() * sign
    xr, rest = x[..., :rd].to(torch.float32), x[..., rd:]
    half = rd // 2
    rotated_half = torch.cat((-xr[..., half:], xr[..., :half]), dim=-1)
    out = xr * cos + rotated_half * sin
    return torch.cat((out.to(x.dtype), rest), dim=-1) if rest.shape[-1] else out.to(x.dtype)


def two_map_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: exact-position scores inside the method's window, far-position scores
    beyond it, one softmax. Sequences must be unpadded (scoring never pads). With a KV cache, the cached keys are
    taken as rotated with this forward's frequencies (untrue only where a dynamic or longrope RoPE changed them
    between forwards)."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    active = _ACTIVE.get()
    if active is None or getattr(module, "layer_idx", None) in active.local_layers:  # a local layer with a RoPE of its own
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    method = active.method
    rotation = active.rotations.get(getattr(module, "layer_type", None)) or active.rotations.get(None)
    if rotation is None:
        raise ModelError(f"no rotary module ran before this attention layer: the attention baselines cannot tell its RoPE; {_UNSUPPORTED}")
    inv_freq, rotary_pos = rotation
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    b, _, lq, _ = query.shape
    lk = key.shape[2]
    position_ids = kwargs.get("position_ids")
    if rotary_pos.shape[-1] == lk:  # the positions the rotary module rotated q and k at
        k_pos = rotary_pos.to(device=query.device, dtype=torch.float32).reshape(-1, lk)
    elif position_ids is not None and position_ids.shape[-1] == lk:
        k_pos = position_ids.to(device=query.device, dtype=torch.float32).reshape(-1, lk)
    else:
        k_pos = torch.arange(lk, device=query.device, dtype=torch.float32)[None]
    q_pos = k_pos[:, lk - lq :]
    inv_freq = inv_freq.to(query.device)
    q_raw = _rotate(query, q_pos, inv_freq, -1.0)  # the model rotated them at their true positions
    k_raw = _rotate(key, k_pos, inv_freq, -1.0)
    fq_pos, fk_pos, divisor = far_positions(method, q_pos, k_pos)
    far_freq = inv_freq / divisor
    k_exact = key.to(torch.float32)  # exact positions: the scores the model itself computes
    k_far = _rotate(k_raw, fk_pos, far_freq).to(torch.float32)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    softcap = kwargs.get("softcap")
    window = exact_window(method)
    out = torch.empty(b, query.shape[1], lq, query.shape[-1], dtype=torch.float32, device=query.device)
    v32 = value.to(torch.float32)
    block = query_block(method.block_memory, b, query.shape[1], lk)
    for s in range(0, lq, block):
        e = min(lq, s + block)
        q_exact = query[:, :, s:e].to(torch.float32)
        q_far = _rotate(q_raw[:, :, s:e], fq_pos[:, s:e], far_freq).to(torch.float32)
        scores = torch.matmul(q_exact, k_exact.transpose(-1, -2)).mul_(scale)
        far = torch.matmul(q_far, k_far.transpose(-1, -2)).mul_(scale)
        del q_exact, q_far
        if softcap:
            scores = scores.div_(softcap).tanh_().mul_(softcap)
            far = far.div_(softcap).tanh_().mul_(softcap)
        d = (q_pos[:, s:e, None] - k_pos[:, None, :])[:, None]  # [B, 1, q, k]
        scores = torch.where(d < window, scores, far)
        del far
        allowed = d >= 0
        if attention_mask is not None:  # the model's own mask (a sliding window, padding) still applies
            mask = attention_mask[..., s:e, :lk] if attention_mask.shape[-2] == lq else attention_mask[..., :lk]
            if mask.dtype == torch.bool:
                allowed = allowed & mask
            else:
                scores = scores.add_(mask.to(torch.float32))
        if method.name == "lambda-window":
            allowed = allowed & ((d < window) | (k_pos[:, None, None, :] < method.params["n_global"]))
        del d
        scores = scores.masked_fill_(~allowed, float("-inf"))
        del allowed
        out[:, :, s:e] = torch.matmul(torch.softmax(scores, dim=-1), v32)
        del scores
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def _register() -> None:
    """The attention function, and its mask: transformers' sdpa mask (None where causality alone is the mask,
    a boolean mask where a sliding window or padding adds to it), which the function honours."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if REGISTERED_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(REGISTERED_NAME, two_map_attention)
    if REGISTERED_NAME not in AttentionMaskInterface._global_mapping:
        AttentionMaskInterface.register(REGISTERED_NAME, sdpa_mask)


def _local_layers(model: Any) -> frozenset[int]:
    """Layers whose RoPE is not the model's global one (Gemma3's sliding layers, with a local base): left alone,
    as longsearch's RoPE patch leaves them."""
    from .models import find_rotary_embeddings, patched_layer_type

    patched_types = {patched_layer_type(module) for _, module in find_rotary_embeddings(model)}
    patched_types.discard(None)
    if not patched_types:
        return frozenset()
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layer_types = list(getattr(config, "layer_types", None) or [])
    return frozenset(i for i, t in enumerate(layer_types) if t not in patched_types)


@contextlib.contextmanager
def attention_method(model: Any, method: AttentionMethod) -> Iterator[Any]:
    """Run ``model`` with an attention-side method (not NBCE) inside the block; its attention is restored after.

    The model's RoPE may be any the forward computes: its config's type (scaled or not) or longsearch's patched
    factors; the frequencies are read from the model-level rotary module in every forward.
    """
    from .models import find_rotary_embeddings

    if method.name == "nbce":
        raise InputError("nbce is not an attention function: score it with nbce_logprobs")
    if method.geometry is None:
        raise ValueError("the method needs its model's geometry")
    _register()
    active = _Active(method, _local_layers(model))
    hook = _rotation_hook(active)
    rotary = find_rotary_embeddings(model)
    handles = [module.register_forward_hook(hook, with_kwargs=True) for _, module in rotary]
    for parent in {name.rpartition(".")[0] for name, _ in rotary}:  # each forward starts with no frequencies
        handles.append(model.get_submodule(parent).register_forward_pre_hook(lambda *_: active.rotations.clear()))
    previous = model.config._attn_implementation
    token = _ACTIVE.set(active)
    try:
        model.set_attn_implementation(REGISTERED_NAME)
        yield model
    finally:
        _ACTIVE.reset(token)
        for handle in handles:
            handle.remove()
        model.set_attn_implementation(previous)


# ---------------------------------------------------------------- NBCE


def _chunks(context: np.ndarray, size: int) -> list[np.ndarray]:
    if size < 1:
        raise InputError("nbce: the question does not leave room for any context in the window: use a longer window")
    return [context[i : i + size] for i in range(0, len(context), size)] or [context[:0]]


@torch.no_grad()
def nbce_logprobs(
    model: Any, prefix: Sequence[int] | np.ndarray, context: np.ndarray, suffix: np.ndarray, window: int, method: AttentionMethod
) -> torch.Tensor:
    """Pooled log-probabilities [len(suffix), vocab]: row t is NBCE's distribution of ``suffix[t]``.

    Each chunk sequence is ``prefix + chunk + suffix`` (≤ ``window`` tokens); the unconditional one is
    ``prefix + suffix``. Row t predicts ``suffix[t]`` (row 0 from the end of the chunk). Returned rows are
    normalised log-probabilities.
    """
    dev = next(model.parameters()).device
    head = np.asarray(list(prefix), dtype=np.int64)
    room = window - len(head) - len(suffix)
    chunks = _chunks(np.asarray(context, dtype=np.int64), room)
    beta = float(method.params["beta"])

    def suffix_logprobs(body: np.ndarray) -> torch.Tensor:
        ids = np.concatenate([head, body, suffix])
        start = len(head) + len(body) - 1  # the position predicting suffix[0]
        logits = model(input_ids=torch.from_numpy(ids)[None].to(dev)).logits[0, start : start + len(suffix)]
        return torch.log_softmax(logits.float(), dim=-1)

    if len(head) == 0:
        raise InputError("nbce needs a tokenizer that starts sequences with a special token (BOS) to score the question alone")
    cond = torch.stack([suffix_logprobs(c) for c in chunks])  # [chunks, S, V]
    uncond = suffix_logprobs(np.zeros(0, dtype=np.int64))  # [S, V]
    if method.params["pooling"] == "average":
        pooled = cond.mean(dim=0)
    else:
        entropy = -(cond.exp() * cond).sum(dim=-1)  # [chunks, S]
        pick = entropy.argmin(dim=0)  # per suffix position
        pooled = cond[pick, torch.arange(cond.shape[1])]
    return torch.log_softmax((1.0 + beta) * pooled - beta * uncond, dim=-1)


def nbce_score(lm: Any, needle_set: Any, method: AttentionMethod) -> Any:
    """:class:`~longsearch.scoring.Score` of NBCE on a needle set: each document's context (between the special
    prefix and the question) cut into chunks that fit the window with the question and answer."""
    import time

    from .needles import special_prefix
    from .scoring import Score, check_compatible

    check_compatible(lm, needle_set, None)
    t0 = time.perf_counter()
    p = len(special_prefix(lm.tokenizer))
    window = lm.geometry.original_length
    per_sample, correct = [], []
    for s in needle_set.samples:
        ids = s.input_ids
        q = int(s.meta.get("question_start", s.answer_start))
        suffix = ids[q : s.answer_end]
        rows = nbce_logprobs(lm.model, ids[:p], ids[p:q], suffix, window, method)
        a = s.answer_start - q  # suffix[a:] is the answer; row t predicts suffix[t]
        target = torch.as_tensor(suffix[a:], device=rows.device)
        lp = rows[a:].gather(1, target[:, None])[:, 0]
        per_sample.append(float(-lp.mean()))
        correct.append(bool((rows[a:].argmax(dim=-1) == target).all()))
    nll = float(np.mean(per_sample))
    return Score(
        nll=nll,
        per_sample=per_sample,
        ppl=math.exp(nll) if nll < 700 else math.inf,
        accuracy=float(np.mean(correct)),
        per_sample_correct=correct,
        seconds=time.perf_counter() - t0,
        n_scored=len(per_sample),
    )


def nbce_segment_nll(lm: Any, document: np.ndarray, prefix: int, length: int, tokens: int, method: AttentionMethod) -> float:
    """NBCE's mean NLL of the same final segment :func:`~longsearch.eval_methods.segment_nll` scores: the
    ``length − prefix − tokens`` tokens before it are the context, cut into chunks."""
    ids = np.concatenate([document[:prefix], document[len(document) - (length - prefix) :]])
    suffix = ids[length - tokens :]
    rows = nbce_logprobs(lm.model, ids[:prefix], ids[prefix : length - tokens], suffix, lm.geometry.original_length, method)
    target = torch.as_tensor(suffix, device=rows.device)
    return float(-rows.gather(1, target[:, None]).mean())
