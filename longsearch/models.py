"""Load a model and patch its RoPE in place with any rescale vector λ and attention factor m.

A patched model computes exactly what transformers computes for the same weights loaded with the
equivalent ``rope_parameters`` of type ``longrope`` (see :func:`config_with_factors`): λ divides every
rotary frequency, m multiplies cos and sin, and a :class:`~longsearch.rope.Schedule` picks (λ, m)
from the forward's length ``max(position_ids) + 1``.

>>> lm = load_model("path/to/model")                                  # doctest: +SKIP
>>> apply_rope(lm.model, "yarn", target_length=131072)               # doctest: +SKIP
>>> with patched(lm.model, factors):                                  # doctest: +SKIP
...     logits = lm.model(input_ids).logits
>>> restore_rope(lm.model)                                            # doctest: +SKIP

How the patch works: transformers computes cos/sin once per forward in the model-level rotary module
(``model.model.rotary_emb``; per-layer modules are ignored) and, for dynamic and longrope types, a
decorator recomputes ``inv_freq`` in every forward, so editing ``inv_freq`` alone can be silently undone.
:func:`apply_rope` therefore swaps that module for a :class:`LongsearchRotaryEmbedding` that holds the
schedule and the original module, and computes cos/sin itself in float32 with transformers' arithmetic.
Applying another λ only replaces the schedule (inv_freq is cached per distinct λ); nothing is rebuilt.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import InputError, ModelError
from .factors import RopeFactors
from .rope import Rescale, RopeGeometry, Schedule, StaticSchedule, SwitchingSchedule
from .rope import schedule as method_schedule

log = logging.getLogger(__name__)

TESTBED_DIR: Path = Path(__file__).parent / "tiny" / "model"

#: What :func:`apply_rope` accepts: factors, one (λ, m), a schedule, a method name, or None (the model as loaded).
RopeSpec = RopeFactors | Rescale | Schedule | str | None

_FULL_ATTENTION = "full_attention"
#: ``load_model``'s attention implementation when none is asked for (also what ``--attn-implementation`` defaults to
#: in eval and finetune): longsearch_windowed for models with sliding-window layers, sdpa otherwise
DEFAULT_ATTN_IMPLEMENTATION = "auto"
_CACHE_SIZE = 32


# ---------------------------------------------------------------- loading


@dataclass
class LoadedModel:
    """A causal LM ready for scoring: model (eval mode), tokenizer, its RoPE geometry, where it came from."""

    model: Any
    tokenizer: Any
    geometry: RopeGeometry
    name: str
    device: torch.device
    dtype: torch.dtype


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` = cuda if available, else cpu; otherwise any torch device string (``cpu``, ``cuda:1``)."""
    if isinstance(device, torch.device):
        return device
    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was asked for but CUDA is not available here: use --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` = bfloat16 on cuda, float32 elsewhere; or float32 / bfloat16 / float16 (and fp32, bf16, fp16)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    text = str(dtype).strip().lower()
    if text == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if text not in _DTYPES:
        raise InputError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return _DTYPES[text]


GGUF_SUFFIX = ".gguf"
_GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelSource:
    """Where a model is read from: a transformers directory or hub id (``path``), or a llama.cpp GGUF file
    (``path`` its directory, ``gguf_file`` its name), which transformers loads itself and dequantizes."""

    path: str
    gguf_file: str | None = None

    @property
    def kwargs(self) -> dict[str, Any]:
        """What transformers' ``from_pretrained`` needs besides the path."""
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    @property
    def file(self) -> Path | None:
        """The GGUF file, or None for a transformers model."""
        return Path(self.path) / self.gguf_file if self.gguf_file else None

    def __str__(self) -> str:
        return str(self.file) if self.gguf_file else self.path


def is_gguf(name_or_path: str | os.PathLike | None) -> bool:
    """True for a path that names a ``.gguf`` file (whether or not it exists: :func:`resolve_source` checks it)."""
    return name_or_path is not None and str(name_or_path).strip().lower().endswith(GGUF_SUFFIX)


def resolve_source(name_or_path: str | os.PathLike | None) -> ModelSource:
    """A local directory (checked), a ``.gguf`` file (checked: it exists and is a GGUF file) or a hub id (passed on);
    None = the embedded testbed."""
    if name_or_path is None:
        if not (TESTBED_DIR / "config.json").exists():
            raise ModelError(
                f"the embedded testbed model is missing from {TESTBED_DIR}: pass --model with a hub id or a local "
                "model directory (or reinstall longsearch)"
            )
        return ModelSource(str(TESTBED_DIR))
    text = os.path.expanduser(str(name_or_path))
    if not text.strip():
        raise ModelError("the model name is empty: pass a hub id or a local model directory")
    path = Path(text)
    if is_gguf(text):
        if not path.is_file():
            raise ModelError(f"no GGUF file at {text}: check the path")
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise ModelError(f"cannot read {text} ({e.strerror or e})") from None
        if magic != _GGUF_MAGIC:
            raise ModelError(f"{text} is not a GGUF file (it does not start with the GGUF magic): pass a llama.cpp .gguf model")
        return ModelSource(str(path.resolve().parent), path.name)
    if path.exists():
        if not path.is_dir():
            raise ModelError(
                f"{text} is a file, not a model directory: pass the directory that holds config.json, or a llama.cpp .gguf file"
            )
        if not (path / "config.json").exists():
            raise ModelError(f"{text} has no config.json: pass a directory saved with save_pretrained or a hub id")
        return ModelSource(str(path))
    # a hub id is "name" or "org/name"; anything else that does not exist is a mistyped path
    if text.startswith((".", "/", "~", "\\")) or text.count("/") > 1 or "\\" in text:
        raise ModelError(f"no model directory at {text}: check the path, or pass a hub id such as org/name")
    return ModelSource(text)


def _resolve_source(name_or_path: str | os.PathLike | None) -> str:
    """The path transformers reads (a GGUF file's directory: pass :attr:`ModelSource.kwargs` with it)."""
    return resolve_source(name_or_path).path


def _short_reason(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = lines[0] if lines else type(exc).__name__
    return reason if len(reason) <= 200 else reason[:197] + "..."


def load_config(name_or_path: str | os.PathLike | None = None) -> Any:
    """The transformers config of a model (hub id, local dir, GGUF file, or None for the testbed); no weights are read.

    A GGUF file's config is what transformers derives from its metadata, without the quantization marker (longsearch
    always loads a GGUF dequantized: see :func:`load_model`); it is read once per file and process."""
    from transformers import AutoConfig

    source = resolve_source(name_or_path)
    if source.gguf_file:
        return copy.deepcopy(_gguf_config(str(source.file), *_file_stamp(source.file)))
    try:
        return AutoConfig.from_pretrained(source.path)
    except Exception as e:  # OSError (not found / offline), ValueError (unknown model type), ...
        raise ModelError(
            f"cannot load the config of {source.path!r} ({_short_reason(e)}): pass a local model directory or a hub id "
            "that is reachable (or cached)"
        ) from None


def _file_stamp(path: Path | None) -> tuple[int, int]:
    st = Path(str(path)).stat()
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4)
def _gguf_config(path: str, size: int, mtime_ns: int) -> Any:
    """The config transformers builds from a GGUF file's metadata (cached by path, size and modification time)."""
    from transformers import AutoConfig

    p = Path(path)
    try:
        config = AutoConfig.from_pretrained(str(p.parent), gguf_file=p.name)
    except Exception as e:
        raise ModelError(
            f"transformers cannot read the GGUF file {path} ({_short_reason(e)}): its architecture may not be one transformers "
            "loads from GGUF (it needs the gguf package too)"
        ) from None
    _drop_quantization_marker(config)
    return config


def _dequantized_is_plain(model: Any) -> None:
    """Make a model transformers loaded from GGUF (its weights dequantized) a plain model: without the quantizer and
    markers that make ``save_pretrained`` and ``Trainer`` refuse it (transformers' own removal, as for ``dequantize``)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.hf_quantizer = None
    model.is_quantized = False
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "_is_quantized", False):
            config._is_quantized = False
        if config is not None:
            _drop_quantization_marker(config)


def _drop_quantization_marker(config: Any) -> None:
    """A GGUF model is loaded dequantized: its config's ``quantization_config`` (which makes save_pretrained and
    Trainer refuse the model) describes the file, not the loaded weights."""
    if hasattr(config, "quantization_config"):
        try:
            delattr(config, "quantization_config")
        except AttributeError:
            config.quantization_config = None


def load_tokenizer(name_or_path: str | os.PathLike | None = None) -> Any:
    """The tokenizer of a model (hub id, local dir, GGUF file, or None for the testbed): the one place tokenizers are
    loaded. A GGUF file's tokenizer is the one transformers builds from its metadata (read once per file and process)."""
    from transformers import AutoTokenizer

    source = resolve_source(name_or_path)
    if source.gguf_file:
        return _gguf_tokenizer(str(source.file), *_file_stamp(source.file))
    try:
        return AutoTokenizer.from_pretrained(source.path)
    except Exception as e:
        raise ModelError(
            f"cannot load a tokenizer for {source.path!r} ({_short_reason(e)}): the model directory needs its tokenizer files, "
            "or pass a reachable hub id"
        ) from None


@functools.lru_cache(maxsize=2)
def _gguf_tokenizer(path: str, size: int, mtime_ns: int) -> Any:
    from transformers import AutoTokenizer

    p = Path(path)
    try:
        return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    except Exception as e:
        raise ModelError(f"transformers cannot build a tokenizer from the GGUF file {path} ({_short_reason(e)})") from None


def load_model(
    name_or_path: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    *,
    attn_implementation: str | None = None,
    shard: bool = False,
    config: Any | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer in eval mode; None loads the embedded testbed model.

    The rotary ``inv_freq`` buffers are kept in float32 even when the weights are bf16/fp16. ``shard``: a
    model too large for one GPU is spread over every visible GPU (transformers' ``device_map="auto"``, which
    needs ``accelerate``). ``config``: the model's config to load it with instead of its own (e.g.
    :func:`config_with_factors`, so that transformers' own rotary module applies the factors).

    ``attn_implementation``: None or ``auto`` (:data:`DEFAULT_ATTN_IMPLEMENTATION`) is ``longsearch_windowed`` for a
    model with sliding-window layers (no length × length mask: :mod:`longsearch.windowed_attention`) and ``sdpa``
    otherwise; any name transformers knows is passed on (``sdpa``, ``eager``, ``flash_attention_2``).

    A llama.cpp GGUF file is loaded by transformers itself (``gguf_file=``: every tensor dequantized, which
    takes a while: about 45 s for a 270M model on one CPU core) and is then a plain model in ``dtype``: its
    quantization marker is dropped, so that it can be trained and saved like any other.
    """
    from transformers import AutoModelForCausalLM

    origin = resolve_source(name_or_path)
    source = origin.path
    dev = resolve_device(device)
    tdtype = resolve_dtype(dtype, dev)
    if config is None:
        config = load_config(name_or_path)
    geometry = model_geometry(config)  # refuse models without RoPE before reading any weight
    from .windowed_attention import resolve_attn_implementation

    attn_implementation = resolve_attn_implementation(attn_implementation, config)
    kwargs: dict[str, Any] = {"dtype": tdtype, "config": config, **origin.kwargs}
    has_accelerate = importlib.util.find_spec("accelerate") is not None
    if shard:
        if not has_accelerate:
            raise ModelError(
                "a model spread over several GPUs (--gpus-per-worker > 1) needs the accelerate package: pip install accelerate"
            )
        kwargs["device_map"] = "auto"
    elif dev.type != "cpu" and has_accelerate:
        kwargs["device_map"] = dev  # weights go straight to the accelerator, not through host memory
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(source, attn_implementation=attn_implementation, **kwargs)
        except ValueError as e:
            if "attn" not in str(e).lower() or attn_implementation == "eager":
                raise
            log.warning("attention implementation %r not supported by %s; using eager", attn_implementation, source)
            model = AutoModelForCausalLM.from_pretrained(source, attn_implementation="eager", **kwargs)
    except Exception as e:
        raise ModelError(f"cannot load the model {str(origin)!r} ({_short_reason(e)}): check the path or hub id") from None
    if origin.gguf_file:  # dequantized: nothing of the GGUF quantization is left in the weights
        _dequantized_is_plain(model)
    tokenizer = load_tokenizer(name_or_path)
    if shard:
        dev = input_device(model)  # where the inputs go: the input embedding's device
    else:
        torch.nn.Module.to(model, dev)
    model.eval()
    keep_rope_fp32(model)
    find_rotary_embeddings(model)  # a model whose rotary module cannot be found is refused here, not mid-search
    name = str(name_or_path) if name_or_path is not None else str(origin)
    return LoadedModel(model=model, tokenizer=tokenizer, geometry=geometry, name=name, device=dev, dtype=tdtype)


def input_device(model: nn.Module) -> torch.device:
    """Where a model's input ids must go: its input embedding's device.

    A model spread by accelerate (``device_map``) runs each module on its hook's execution device, and a module
    offloaded to the CPU or disk holds its weights on ``meta``: the execution device is then the answer. Not the
    first parameter's device, which for a spread model may be ``meta``, and is never where the final norm and
    lm_head run (the last device)."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    candidates = [embedding] if isinstance(embedding, nn.Module) else []
    for module in candidates:
        hook = getattr(module, "_hf_hook", None)
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
            return weight.device
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


# ---------------------------------------------------------------- geometry


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    if getter is not None:
        try:
            return getter(decoder=True)
        except TypeError:
            return getter()
    return config


def _rope_dict(text: Any) -> tuple[dict[str, Any] | None, str | None]:
    """The rope_parameters entry that full attention uses, and its layer-type key when nested (Gemma3)."""
    rp = getattr(text, "rope_parameters", None)
    if rp is None:
        rp = getattr(text, "rope_scaling", None)
    if not isinstance(rp, dict):
        return None, None
    if "rope_theta" in rp or "rope_type" in rp or "type" in rp:
        return rp, None
    nested = {k: v for k, v in rp.items() if isinstance(v, dict)}
    if not nested:
        return rp, None
    if _FULL_ATTENTION in nested:
        return nested[_FULL_ATTENTION], _FULL_ATTENTION
    key = sorted(nested)[0]
    return nested[key], key


def _head_dim(text: Any) -> int:
    head_dim = getattr(text, "head_dim", None)
    if head_dim:
        return int(head_dim)
    hidden, heads = getattr(text, "hidden_size", None), getattr(text, "num_attention_heads", None)
    if not hidden or not heads:
        raise ModelError("the model config has neither head_dim nor hidden_size/num_attention_heads: cannot find the rotary dimension")
    return int(hidden) // int(heads)


def _partial_rotary_factor(text: Any, rp: dict[str, Any] | None) -> float | None:
    value = (rp or {}).get("partial_rotary_factor")
    if value is None:
        value = getattr(text, "partial_rotary_factor", None)
    if value is None:
        value = getattr(text, "rotary_pct", None)
    return None if value is None else float(value)


def model_geometry(config: Any) -> RopeGeometry:
    """The RoPE geometry (rotary dim d, base b, original window L) of a transformers config.

    d = head_dim × partial_rotary_factor; b = ``rope_theta`` (for per-layer-type RoPE, the full-attention
    entry); L = top-level ``original_max_position_embeddings``, else the one in ``rope_parameters``, else
    ``max_position_embeddings``. ``sliding_window`` is never the original window.
    """
    text = _text_config(config)
    rp, _ = _rope_dict(text)
    base = (rp or {}).get("rope_theta")
    if base is None:
        base = getattr(text, "rope_theta", None)
    if base is None:
        kind = getattr(text, "model_type", type(text).__name__)
        raise ModelError(f"the model ({kind}) has no rotary position embedding (no rope_theta): longsearch needs a RoPE model")
    if rp is not None and "mrope_section" in rp:
        raise ModelError("multimodal rotary embeddings (mrope) are not supported: use a text-only RoPE model")
    factor = _partial_rotary_factor(text, rp) or 1.0
    rotary_dim = int(_head_dim(text) * factor)
    original = getattr(text, "original_max_position_embeddings", None)
    if not original:
        original = (rp or {}).get("original_max_position_embeddings")
    if not original:
        original = getattr(text, "max_position_embeddings", None)
    if not original:
        raise ModelError("the model config has no max_position_embeddings: cannot tell its original context window")
    try:
        return RopeGeometry(rotary_dim=rotary_dim, base=float(base), original_length=int(original))
    except InputError as e:
        raise ModelError(f"the model's RoPE settings are unusable: {e}") from None


@dataclass(frozen=True)
class LayerRope:
    """The RoPE of one kind of decoder layer: how many layers, their base and rotary dim, their sliding window (None
    for full attention) and whether longsearch's λ applies to them (``rescaled``)."""

    layer_type: str | None  # None: every layer
    layers: int
    base: float
    rotary_dim: int
    window: int | None
    rope_type: str
    rescaled: bool


def layer_ropes(config: Any) -> list[LayerRope]:
    """The RoPE of each layer type of a config: Gemma 3's sliding layers (their own local base, never rescaled: a
    window of 512–4096 tokens never sees distances beyond it) and its global layers (the model's geometry, the
    ones λ rescales); for a model whose layers share one RoPE (Llama; Mistral and Gemma 2 with sliding layers),
    one entry per layer type, all rescaled."""
    text = _text_config(config)
    g = model_geometry(config)
    rp = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None)
    _, patched_key = _rope_dict(text)
    types = list(getattr(text, "layer_types", None) or [])
    n_layers = int(getattr(text, "num_hidden_layers", 0) or len(types))
    sliding = getattr(text, "sliding_window", None)
    head = _head_dim(text)

    def window(kind: str | None) -> int | None:
        return int(sliding) if sliding and kind is not None and "sliding" in kind else None

    if patched_key is not None and isinstance(rp, dict):  # per-layer-type RoPE: only the patched type is rescaled
        out = []
        for kind, params in rp.items():
            if not isinstance(params, dict):
                continue
            prf = _partial_rotary_factor(text, params) or 1.0
            count = sum(1 for t in types if t == kind) if types else n_layers
            base = float(params.get("rope_theta", g.base))
            rope_type = str(params.get("rope_type", params.get("type", "default")))
            out.append(LayerRope(kind, count, base, int(head * prf), window(kind), rope_type, kind == patched_key))
        return out
    rope_type = str((rp or {}).get("rope_type", (rp or {}).get("type", "default"))) if isinstance(rp, dict) else "default"
    if not types:
        return [LayerRope(None, n_layers, g.base, g.rotary_dim, None, rope_type, True)]
    return [LayerRope(kind, types.count(kind), g.base, g.rotary_dim, window(kind), rope_type, True) for kind in dict.fromkeys(types)]


# ---------------------------------------------------------------- transformers equivalents


def longrope_rope_parameters(factors: RopeFactors, config: Any | None = None) -> dict[str, Any]:
    """The transformers ``rope_parameters`` (type ``longrope``) that compute what the patch computes.

    With ``config``, its ``partial_rotary_factor`` is carried over (transformers reads it from this dict).
    """
    params: dict[str, Any] = {
        "rope_type": "longrope",
        "rope_theta": float(factors.base),
        "long_factor": [float(x) for x in factors.long_factor],
        "short_factor": [float(x) for x in factors.short_factor],
        "original_max_position_embeddings": int(factors.original_length),
        "factor": float(factors.scale),
        "attention_factor": float(factors.attention_factor),
    }
    if config is not None:
        text = _text_config(config)
        rp, _ = _rope_dict(text)
        prf = _partial_rotary_factor(text, rp)
        if prf is not None:
            params["partial_rotary_factor"] = prf
    return params


def text_config_dict(cfg: dict[str, Any]) -> dict[str, Any]:
    """Where a config dict keeps the text model's settings, RoPE included: its ``text_config`` in a multimodal
    config (Gemma3, Llava, ...), else the dict itself. The same object, not a copy: changes land in ``cfg``."""
    sub = cfg.get("text_config")
    return sub if isinstance(sub, dict) else cfg


def patch_config_dict(cfg: dict[str, Any], factors: RopeFactors, config: Any | None = None) -> dict[str, Any]:
    """A copy of a config dict (a config.json, or ``config.to_dict()``) whose RoPE is ``longrope`` with these
    factors and whose window is the target: the one place the quirks of model families live.

    - ``rope_parameters`` is set, and the legacy ``rope_scaling`` too when the config has one (transformers
      lets it win); in a multimodal config the text model's entry (``text_config``) is the one changed;
    - per-layer-type RoPE (Gemma3): only the full-attention entry changes, sliding layers keep their local RoPE;
    - ``max_position_embeddings`` = target, and the top-level ``original_max_position_embeddings`` of
      Phi-3-style configs (which would otherwise override the nested one) = the original window;
    - an empty ``head_dim`` is filled in (transformers' longrope reads it without the hidden/heads fallback).

    ``config`` (the same config as an object) carries ``partial_rotary_factor`` over when given.
    """
    out = copy.deepcopy(cfg)
    text = text_config_dict(out)
    params = longrope_rope_parameters(factors, config)
    current = text.get("rope_parameters") or text.get("rope_scaling")
    nested = (
        isinstance(current, dict)
        and bool(current)
        and "rope_type" not in current
        and "rope_theta" not in current
        and all(isinstance(v, dict) for v in current.values())
    )
    if nested:
        assert isinstance(current, dict)
        key = _FULL_ATTENTION if _FULL_ATTENTION in current else (next(iter(current)) if len(current) == 1 else None)
        if key is None:
            raise ModelError(
                f"this model has RoPE layer types {', '.join(current)} and none is {_FULL_ATTENTION}: cannot tell which to extend"
            )
        params = {**current, key: params}
    text["rope_parameters"] = params
    if text.get("rope_scaling"):
        text["rope_scaling"] = params
    else:
        text.pop("rope_scaling", None)
    if "head_dim" in text and not text["head_dim"] and text.get("hidden_size") and text.get("num_attention_heads"):
        text["head_dim"] = int(text["hidden_size"]) // int(text["num_attention_heads"])
    text["max_position_embeddings"] = int(factors.target_length)
    model_type = str(text.get("model_type", out.get("model_type", "")))
    if text.get("original_max_position_embeddings") is not None or model_type.startswith(("phi3", "phimoe")):
        text["original_max_position_embeddings"] = int(factors.original_length)
    return out


def config_with_factors(config: Any, factors: RopeFactors) -> Any:
    """A deep copy of ``config`` whose RoPE is ``longrope`` with these factors: the keys :func:`patch_config_dict`
    changes in its dict are set on the copy (everything else, the attention implementation included, is kept)."""
    factors.check_geometry(model_geometry(config), "this config")
    before = config.to_dict()
    after = patch_config_dict(before, factors, config)
    if isinstance(before.get("text_config"), dict):
        before, after = before["text_config"], after["text_config"]
    new = copy.deepcopy(config)
    text = _text_config(new)
    for key, value in after.items():
        if before.get(key) != value:
            setattr(text, key, copy.deepcopy(value))
    return new


# ---------------------------------------------------------------- finding and patching the rotary module


def _is_rotary(module: nn.Module) -> bool:
    if isinstance(module, LongsearchRotaryEmbedding):
        return True
    if not type(module).__name__.endswith("RotaryEmbedding"):
        return False
    return any(name.endswith("inv_freq") for name, _ in module.named_buffers(recurse=False))


def find_rotary_embeddings(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model-level rotary module(s) that compute cos/sin for the decoder (e.g. ``model.rotary_emb``).

    Per-layer rotary modules (a path with a layer index), vision towers and modules nested in another
    rotary module (the original kept inside a patch) are left out. Raises ModelError if none is found.
    """
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not _is_rotary(module):
            continue
        parts = name.split(".")
        if any(p.isdigit() for p in parts) or any(p in ("visual", "vision_tower", "vision_model") for p in parts):
            continue
        if any(name.startswith(prefix + ".") for prefix, _ in found):
            continue
        found.append((name, module))
    if not found:
        raise ModelError(
            f"no rotary embedding module found in {type(model).__name__}: longsearch patches transformers RoPE "
            "models whose decoder has a model-level rotary_emb"
        )
    return found


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def _layer_types(module: nn.Module) -> list[str] | None:
    rope_type = getattr(module, "rope_type", None)
    if isinstance(rope_type, dict) and rope_type:
        return list(rope_type)
    return None


def _inv_freq_buffer(module: nn.Module, layer_type: str | None) -> torch.Tensor | None:
    name = "inv_freq" if layer_type is None else f"{layer_type}_inv_freq"
    buf = getattr(module, name, None)
    return buf if isinstance(buf, torch.Tensor) else None


class LongsearchRotaryEmbedding(nn.Module):
    """Stands in for a model-level rotary module: cos/sin from a :class:`Schedule` of (λ, m).

    Arithmetic as transformers (float32): inv_freq = 1 / (λ · b^(arange(0, d, 2)/d)),
    freqs = position × inv_freq, emb = cat(freqs, freqs), cos·m and sin·m cast to the input dtype.
    The length the schedule sees is ``max(position_ids) + 1``.

    Per-layer-type modules (Gemma3: ``sliding_attention`` and ``full_attention`` with different bases):
    the schedule applies to the full-attention type only; the local (sliding) type is delegated to the
    original module unchanged. This is what transformers does for such a config with a ``longrope``
    full-attention entry and a default sliding entry (see :func:`config_with_factors`).
    """

    def __init__(self, original: nn.Module, geometry: RopeGeometry, schedule: Schedule, patched_type: str | None) -> None:
        super().__init__()
        self.original = original
        self.geometry = geometry
        self.patched_type = patched_type
        self.schedule: Schedule = schedule
        self._cache: OrderedDict[tuple[bytes, str], torch.Tensor] = OrderedDict()
        self._exponents = torch.arange(0, geometry.rotary_dim, 2, dtype=torch.int64).float() / geometry.rotary_dim

    def set_schedule(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def extra_repr(self) -> str:
        kind = f", layer_type={self.patched_type}" if self.patched_type else ""
        return f"rotary_dim={self.geometry.rotary_dim}, base={self.geometry.base:g}{kind}, schedule={type(self.schedule).__name__}"

    def inv_freq_for(self, lam: np.ndarray, device: torch.device) -> torch.Tensor:
        """inv_freq for one λ on one device (cached, least recently used dropped first)."""
        lam = np.asarray(lam, dtype=np.float64)
        key = (lam.tobytes(), str(device))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        if lam.shape != (self.geometry.n_freq,):
            raise InputError(
                f"λ has {lam.size} values but the model has {self.geometry.n_freq} rotary frequencies (rotary dim "
                f"{self.geometry.rotary_dim})"
            )
        if not np.all(np.isfinite(lam)) or np.any(lam <= 0):
            raise InputError("λ must hold finite positive numbers")
        factors = torch.tensor(lam.tolist(), dtype=torch.float32)
        value = (1.0 / (factors * self.geometry.base**self._exponents)).to(device)
        self._cache[key] = value
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return value

    def inv_freq_and_m(self, position_ids: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, float]:
        """(inv_freq, attention factor m) a forward at ``position_ids`` uses: what the schedule gives at that length."""
        sched = self.schedule
        if isinstance(sched, SwitchingSchedule):  # no host sync: pick long/short on the device, as transformers does
            long, short, split = sched.switch()
            if long is short or (long.m == short.m and np.array_equal(long.lam, short.lam)):
                return self.inv_freq_for(long.lam, device), long.m
            if long.m != short.m:  # m differs too: it must be known on the host
                r = sched(int(torch.max(position_ids).item()) + 1)
                return self.inv_freq_for(r.lam, device), r.m
            seq_len = torch.max(position_ids) + 1
            chosen = torch.where(seq_len > split, self.inv_freq_for(long.lam, device), self.inv_freq_for(short.lam, device))
            return chosen, long.m
        r = sched(int(torch.max(position_ids).item()) + 1)  # any other schedule: ask it at this length
        return self.inv_freq_for(r.lam, device), r.m

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, layer_type: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_type is not None and layer_type != self.patched_type:
            return self.original(x, position_ids, layer_type)
        inv_freq, m = self.inv_freq_and_m(position_ids, x.device)
        freqs = position_ids[..., None].float() * inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * m
        sin = emb.sin() * m
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("_modules", {}).get("original")
            if original is None or name.startswith("__"):
                raise
            return getattr(original, name)


def _to_schedule(spec: RopeSpec, g: RopeGeometry, target_length: int | None) -> Schedule:
    if isinstance(spec, RopeFactors):
        spec.check_geometry(g)
        return spec.schedule()
    if isinstance(spec, Rescale):
        if spec.lam.shape != (g.n_freq,):
            raise InputError(f"λ has {spec.lam.size} values but the model has {g.n_freq} rotary frequencies")
        return StaticSchedule(spec)
    if isinstance(spec, str):
        if target_length is None:
            raise InputError(f"the method {spec!r} needs a target length: pass --target (e.g. 128k)")
        return method_schedule(spec, g, int(target_length))
    if callable(spec):
        return spec
    raise InputError(f"cannot apply {type(spec).__name__} as RoPE: give RopeFactors, a Rescale, a schedule or a method name")


def patched_layer_type(module: nn.Module) -> str | None:
    """The layer type whose RoPE longsearch extends in a model-level rotary module with per-layer-type RoPE
    (Gemma3: ``full_attention``; the only type when there is one), None for a module without types. The other
    types' layers keep their own RoPE, under longsearch's patch and under the attention baselines alike."""
    types = _layer_types(module)
    if types is None:
        return None
    if _FULL_ATTENTION in types:
        return _FULL_ATTENTION
    if len(types) == 1:
        return types[0]
    raise ModelError(
        f"the rotary module has layer types {', '.join(types)} and none is full_attention: longsearch cannot tell which one to extend"
    )


def apply_rope(model: nn.Module, spec: RopeSpec, target_length: int | None = None) -> None:
    """Patch the model's RoPE in place.

    ``spec``: :class:`RopeFactors` (long λ above the original window, short within, m at every length),
    a :class:`Rescale` (one λ, m at every length), a schedule (``seq_len -> Rescale``), a method name
    (``"yarn"``, needs ``target_length``), or None (back to the RoPE the model was loaded with).
    Re-applying is cheap: a patched model only gets the new schedule.

    Models with per-layer-type RoPE (Gemma3: local sliding-window layers with their own base, global
    full-attention layers): λ and m apply to the full-attention type only, and the geometry is that of
    full attention; sliding layers keep their local RoPE, as transformers does for a ``longrope``
    full-attention entry. Raises ModelError for a model without a patchable rotary module.
    """
    if spec is None:
        restore_rope(model)
        return
    g = model_geometry(model.config)
    sched = _to_schedule(spec, g, target_length)
    for name, module in find_rotary_embeddings(model):
        if isinstance(module, LongsearchRotaryEmbedding):
            module.set_schedule(sched)
            continue
        own = getattr(module, "config", None)
        if own is not None and own is not model.config and model_geometry(own) != g:
            raise ModelError(
                f"{name} has its own RoPE settings ({model_geometry(own)}), unlike the model's ({g}): several "
                "differently configured rotary modules are not supported"
            )
        ptype = patched_layer_type(module)
        buf = _inv_freq_buffer(module, ptype)
        if buf is not None and buf.numel() != g.n_freq:
            raise ModelError(
                f"{name} rotates {2 * buf.numel()} dimensions but the config says {g.rotary_dim}: this model's RoPE layout is not supported"
            )
        _set_submodule(model, name, LongsearchRotaryEmbedding(module, g, sched, ptype))


def restore_rope(model: nn.Module) -> None:
    """Put the original rotary module(s) back; a model that is not patched is left as it is."""
    for name, module in model.named_modules():
        if isinstance(module, LongsearchRotaryEmbedding):
            _set_submodule(model, name, module.original)


def current_schedules(model: nn.Module) -> dict[str, Schedule]:
    """The schedule of each patched rotary module, by module path (empty when the model is not patched)."""
    return {name: m.schedule for name, m in model.named_modules() if isinstance(m, LongsearchRotaryEmbedding)}


@contextmanager
def patched(model: nn.Module, spec: RopeSpec, target_length: int | None = None) -> Iterator[nn.Module]:
    """Apply ``spec`` for the duration of a ``with`` block, then go back to what was there before."""
    before = current_schedules(model)
    apply_rope(model, spec, target_length)
    try:
        yield model
    finally:
        if not before:
            restore_rope(model)
        else:  # patched again where the block unpatched it, then each module gets back its own schedule
            apply_rope(model, next(iter(before.values())))
            for name, module in model.named_modules():
                if isinstance(module, LongsearchRotaryEmbedding) and name in before:
                    module.set_schedule(before[name])


def keep_rope_fp32(model: nn.Module) -> None:
    """Give every rotary module float32 ``inv_freq`` buffers, recomputed rather than upcast when they were cast.

    ``model.to(torch.bfloat16)`` casts these buffers too, which rounds the frequencies (a silent accuracy loss).
    """
    for name, module in model.named_modules():
        if isinstance(module, LongsearchRotaryEmbedding) or not _is_rotary(module):
            continue
        bufs = {n: b for n, b in module.named_buffers(recurse=False) if n.endswith("inv_freq")}
        if all(b.dtype == torch.float32 for b in bufs.values()):
            continue
        fresh = None
        config = getattr(module, "config", None)
        if config is not None:
            try:
                fresh = type(module)(config)
            except Exception:  # an unusual constructor: fall back to an upcast
                log.warning("could not rebuild %s in float32; upcasting its inv_freq", name)
        for n, b in bufs.items():
            src = getattr(fresh, n, None) if fresh is not None else None
            value = src if isinstance(src, torch.Tensor) and src.shape == b.shape else b
            module.register_buffer(n, value.detach().to(device=b.device, dtype=torch.float32), persistent=False)


__all__ = [
    "DEFAULT_ATTN_IMPLEMENTATION",
    "GGUF_SUFFIX",
    "TESTBED_DIR",
    "LayerRope",
    "LoadedModel",
    "LongsearchRotaryEmbedding",
    "ModelSource",
    "RopeSpec",
    "apply_rope",
    "config_with_factors",
    "current_schedules",
    "find_rotary_embeddings",
    "input_device",
    "is_gguf",
    "keep_rope_fp32",
    "layer_ropes",
    "load_config",
    "load_model",
    "longrope_rope_parameters",
    "model_geometry",
    "patch_config_dict",
    "patched",
    "patched_layer_type",
    "resolve_device",
    "resolve_dtype",
    "resolve_source",
    "restore_rope",
]


# ---------------------------------------------------------------- identity of a model (for resume)

_FINGERPRINT_SAMPLE = 1 << 20  # bytes read at each sampled offset of a weight file
_FINGERPRINT_OFFSETS = 16


def _model_dir(name_or_path: str | os.PathLike | None) -> Path | None:
    """The directory holding the model's files: a local dir, the testbed, or a hub id's cached snapshot."""
    source = _resolve_source(name_or_path)
    if Path(source).is_dir():
        return Path(source)
    try:
        from transformers.utils import cached_file

        config = cached_file(source, "config.json", local_files_only=True)
    except Exception:
        return None
    return Path(config).parent if config else None


def _fast_file_hash(path: Path) -> str:
    """sha256 over the size and 1 MiB read at 16 evenly spaced offsets (and the end): seconds for a 16 GB file."""
    import hashlib

    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= _FINGERPRINT_SAMPLE * (_FINGERPRINT_OFFSETS + 1):
            h.update(f.read())
        else:
            for k in range(_FINGERPRINT_OFFSETS + 1):
                f.seek(min(k * (size // _FINGERPRINT_OFFSETS), size - _FINGERPRINT_SAMPLE))
                h.update(f.read(_FINGERPRINT_SAMPLE))
    return h.hexdigest()[:16]


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "vocab.txt",
)


def model_fingerprint(name_or_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """What identifies a model for a run: its config, each weight file's size and a fast hash, its tokenizer files
    (for a GGUF file: the config transformers reads from it and the file's size and hash).

    ``{"config": hash, "weights": {file: "size:hash"}, "tokenizer": hash}``; a hub id that is not in the local
    cache gives only what its config says (``"weights": None``).
    """
    import hashlib
    import json

    config = load_config(name_or_path)
    cfg = config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "_commit_hash"):
        cfg.pop(volatile, None)
    out: dict[str, Any] = {"config": hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]}
    gguf = resolve_source(name_or_path).file
    if gguf is not None:  # one file holds the weights, the tokenizer and the config: its hash covers all three
        return {**out, "weights": {gguf.name: f"{gguf.stat().st_size}:{_fast_file_hash(gguf)}"}, "tokenizer": None}
    d = _model_dir(name_or_path)
    if d is None:
        return {**out, "weights": None, "tokenizer": None}
    weights = {}
    tok = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(d).as_posix()
        if p.name.endswith(_WEIGHT_SUFFIXES):
            weights[rel] = f"{p.stat().st_size}:{_fast_file_hash(p)}"
        elif p.name in _TOKENIZER_FILES:
            tok.update(rel.encode())
            tok.update(p.read_bytes())
    return {**out, "weights": weights, "tokenizer": tok.hexdigest()[:16]}


def fingerprint_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words (empty when they match)."""
    changes = []
    if old.get("config") != new.get("config"):
        changes.append("its config.json")
    ow, nw = old.get("weights"), new.get("weights")
    if ow is not None and nw is not None:
        for name in sorted(set(ow) | set(nw)):
            if name not in nw:
                changes.append(f"weight file {name} (missing)")
            elif name not in ow:
                changes.append(f"weight file {name} (new)")
            elif ow[name] != nw[name]:
                changes.append(f"weight file {name} (size or content)")
    if old.get("tokenizer") and new.get("tokenizer") and old["tokenizer"] != new["tokenizer"]:
        changes.append("its tokenizer files")
    return changes
