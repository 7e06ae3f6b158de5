"""Attention with no length × length tensor, for models with sliding-window layers (Gemma 2/3, Mistral, Qwen2 …).

Under transformers' ``sdpa``, causal full-attention layers get no mask (``is_causal=True``: a fused kernel whose
memory is linear in length), but a sliding-window layer gets a materialised ``[batch, 1, L, L]`` boolean mask
(``masking_utils.sdpa_mask``: the window cannot be expressed with ``is_causal``) and SDPA then does the full L²
work: 16 GiB of mask at 128k on a layer that looks 512 tokens back. ``flash_attention_2`` and ``flex_attention``
avoid it but need a GPU kernel (flash) or a compiled block mask (flex).

:data:`NAME` (``longsearch_windowed``) is an attention implementation registered with transformers'
``AttentionInterface``, with a mask function in ``AttentionMaskInterface``:

* the mask function returns None whenever the mask is plain causal or causal + sliding window with no padding, no
  packed sequences, and queries aligned with the end of the keys (a forward from position 0, or one decoding step):
  what transformers' own ``sdpa`` mask skips for causal layers, extended to sliding ones. Anything else (padding,
  a static cache, an image overlay) gets transformers' ``sdpa`` mask, materialised, and plain SDPA;
(The name has no "sdpa" in it: transformers checks any implementation so named against the model's SDPA support,
and Gemma 2, whose attention soft-capping SDPA cannot do, would be refused although this function computes it.)

* the attention function, for a mask of None: full causal layers run SDPA with ``is_causal=True`` (the fused
  kernel, no mask); sliding layers run SDPA over blocks of :data:`QUERY_BLOCK` queries against only the keys their
  window reaches (``block + window`` keys), with a ``block × (block + window)`` mask: memory linear in length;
  attention soft-capping (Gemma 2), which SDPA cannot do, is computed block by block by hand.

The window of a layer is the ``sliding_window`` the model passes to its attention function (or its attention
module's ``sliding_window``, or the config's for a layer whose ``layer_types`` entry is sliding). Select it with
``load_model(..., attn_implementation="longsearch_windowed")``, or ``auto`` (:func:`resolve_attn_implementation`:
this for a config with sliding layers, ``sdpa`` otherwise).

>>> resolve_attn_implementation("auto", None)
'sdpa'
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .errors import InputError, ModelError

NAME = "longsearch_windowed"
#: what ``--attn-implementation`` defaults to: :data:`NAME` for models with sliding-window layers, else ``sdpa``
AUTO = "auto"
#: queries per block of a sliding-window layer (the mask of a block is QUERY_BLOCK × (QUERY_BLOCK + window))
QUERY_BLOCK = 1024
_GQA = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)  # SDPA's enable_gqa


def has_sliding_layers(config: Any) -> bool:
    """True when some decoder layer of this config attends through a sliding window."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if not getattr(text, "sliding_window", None):
        return False
    types = getattr(text, "layer_types", None)
    if types:
        return any("sliding" in str(t) for t in types)
    return bool(getattr(text, "use_sliding_window", True))


def resolve_attn_implementation(requested: str | None, config: Any | None) -> str:
    """``auto`` (or None): :data:`NAME` for a config with sliding layers, ``sdpa`` otherwise; any other name as given
    (``sdpa``, ``eager``, ``flash_attention_2``, ``longsearch_windowed``, …). :data:`NAME` is registered on the way."""
    text = (requested or AUTO).strip()
    if not text:
        raise InputError("--attn-implementation is empty: give auto, sdpa, eager, longsearch_windowed or flash_attention_2")
    if text == AUTO:
        text = NAME if config is not None and has_sliding_layers(config) else "sdpa"
    if text == NAME:
        register()
    from transformers import AttentionInterface

    known = ["eager", *AttentionInterface._global_mapping]
    if text not in known:
        raise InputError(f"unknown attention implementation {text!r}: use auto, {', '.join(k for k in known if k != AUTO)}")
    return text


def register() -> None:
    """Register :data:`NAME` with transformers (attention function and mask function); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, windowed_sdpa)
    if NAME not in AttentionMaskInterface._global_mapping:
        AttentionMaskInterface.register(NAME, windowed_mask)


def windowed_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: Any = 0,
    kv_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    allow_is_causal_skip: bool = True,
    **kwargs: Any,
) -> torch.Tensor | None:
    """None where :func:`windowed_sdpa` rebuilds the mask from the layer's window (causal, optionally sliding, no
    padding, queries at the end of the keys); otherwise transformers' ``sdpa`` mask, materialised."""
    from transformers.masking_utils import prepare_padding_mask, sdpa_mask

    padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
    aligned = q_length == kv_length or q_length == 1
    if allow_is_causal_skip and aligned and not isinstance(q_offset, torch.Tensor) and (padding is None or bool(padding.all())):
        return None
    kwargs.pop("local_size", None)
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        attention_mask=attention_mask,
        allow_is_causal_skip=False,
        **kwargs,
    )


def _layer_window(module: Any, given: int | None) -> int | None:
    if given:
        return int(given)
    own = getattr(module, "sliding_window", None)
    if own:
        return int(own)
    config = getattr(module, "config", None)
    types = getattr(config, "layer_types", None)
    idx = getattr(module, "layer_idx", None)
    if types and idx is not None and idx < len(types) and "sliding" in str(types[idx]):
        window = getattr(config, "sliding_window", None)
        if not window:
            raise ModelError(f"layer {idx} is a sliding-window layer but the config has no sliding_window: use --attn-implementation sdpa")
        return int(window)
    return None


def _expand_kv(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Keys and values for SDPA: with ``enable_gqa`` where torch has it, else repeated to the query heads."""
    groups = query.shape[1] // key.shape[1]
    if groups == 1:
        return key, value, {}
    if _GQA:
        return key, value, {"enable_gqa": True}
    from transformers.integrations.sdpa_attention import repeat_kv

    return repeat_kv(key, groups), repeat_kv(value, groups), {}


def windowed_sdpa(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function (query/key/value ``[B, heads, L, D]``; returns ``[B, L, heads, D]``)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        raise ModelError(
            "this model's attention has sink logits, which longsearch_windowed does not compute: use --attn-implementation sdpa"
        )
    if attention_mask is not None or not getattr(module, "is_causal", True):  # a materialised mask, or bidirectional
        if softcap is not None:
            raise ModelError("attention soft-capping with a padding mask: use --attn-implementation eager")
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    window = _layer_window(module, sliding_window)
    p = dropout if getattr(module, "training", False) else 0.0
    lq, lk = query.shape[2], key.shape[2]
    if window is not None and lq == 1 and lk > window:  # one decoding step: the last `window` keys
        key, value, lk = key[:, :, lk - window :], value[:, :, lk - window :], window
    if softcap is None and (window is None or lk <= window) and lq in (1, lk):
        k, v, gqa = _expand_kv(module, query, key, value)
        out = F.scaled_dot_product_attention(query, k, v, dropout_p=p, scale=scaling, is_causal=lq > 1, **gqa)
        return out.transpose(1, 2).contiguous(), None
    return _blocks(module, query, key, value, window, scaling, softcap, p), None


def _blocks(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    window: int | None,
    scaling: float | None,
    softcap: float | None,
    dropout: float,
) -> torch.Tensor:
    """Causal (sliding-window) attention block by block of queries; queries are the last ``lq`` of the ``lk`` keys."""
    lq, lk = query.shape[2], key.shape[2]
    offset = lk - lq
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    k_all, v_all, gqa = _expand_kv(module, query, key, value)
    if softcap is not None and gqa:  # the hand-written path needs one key head per query head
        from transformers.integrations.sdpa_attention import repeat_kv

        groups = query.shape[1] // key.shape[1]
        k_all, v_all, gqa = repeat_kv(key, groups), repeat_kv(value, groups), {}
    outs = []
    for s in range(0, lq, QUERY_BLOCK):
        e = min(lq, s + QUERY_BLOCK)
        first = offset + s  # the key index of this block's first query
        lo = max(0, first - window + 1) if window is not None else 0
        hi = offset + e
        qi = torch.arange(first, offset + e, device=query.device)[:, None]
        kj = torch.arange(lo, hi, device=query.device)[None, :]
        allowed = kj <= qi
        if window is not None:
            allowed = allowed & (qi - kj < window)
        q = query[:, :, s:e]
        k, v = k_all[:, :, lo:hi], v_all[:, :, lo:hi]
        if softcap is None:
            outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout, scale=scale, **gqa))
            continue
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        scores = torch.tanh(scores / softcap) * softcap
        scores = scores.masked_fill(~allowed, float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        if dropout:
            weights = F.dropout(weights, p=dropout, training=True)
        outs.append(torch.matmul(weights, v))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous()


__all__ = ["AUTO", "NAME", "QUERY_BLOCK", "has_sliding_layers", "register", "resolve_attn_implementation", "windowed_mask", "windowed_sdpa"]
