"""The testbed (or any small Llama-architecture transformers model) as a llama.cpp GGUF file, and as Phi-3.

llama.cpp is the consumer of ``longsearch export --format gguf``; to check that export against llama.cpp
itself, a model is needed that llama.cpp can load and transformers can run with the same weights. This
module writes one with the ``gguf`` package:

* architecture ``llama``: float32 weights; the query and key projections reordered the way llama.cpp's
  ``llama`` architecture expects (it rotates adjacent pairs, transformers' Llama rotates the two halves of
  each head; the reordering makes the two the same function), no RoPE scaling keys — as a plain Llama GGUF
  has none;
* architecture ``phi3``: the same network written as Phi-3 (query/key/value fused into ``attn_qkv``, gate and
  up fused into ``ffn_up``; Phi-3 rotates halves, so no reordering). :func:`phi3_from_llama` makes the
  matching transformers ``Phi3ForCausalLM``, so both sides of a Phi-3 comparison are real Phi-3 code.

The vocabulary is the testbed's byte vocabulary as a SentencePiece-style ``llama`` vocabulary: token ``b`` is
the byte ``<0xBB>`` (type BYTE), then ``<s>``, ``</s>``, ``<pad>`` (CONTROL) and unused ids up to the
embedding's size — the same ids transformers uses, so both runs see the same token ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ARCHS = ("llama", "phi3")


def _llama_to_gguf_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of each head from halves order (x₀…x_{d/2−1}, x_{d/2}…) to pairs order (x₀, x_{d/2}, x₁, …)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _vocab(n_vocab: int, special: dict[int, str]) -> tuple[list[str], list[float], list[int]]:
    import gguf

    tokens, scores, types = [], [], []
    for i in range(n_vocab):
        if i < 256:
            tokens.append(f"<0x{i:02X}>")
            types.append(int(gguf.TokenType.BYTE))
        elif i in special:
            tokens.append(special[i])
            types.append(int(gguf.TokenType.CONTROL))
        else:
            tokens.append(f"<unused{i - 256}>")
            types.append(int(gguf.TokenType.UNUSED))
        scores.append(0.0)
    return tokens, scores, types


def phi3_from_llama(model: Any) -> Any:
    """A transformers ``Phi3ForCausalLM`` computing the same function as a Llama model (fused projections)."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    c = model.config
    rope = dict(getattr(c, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0})
    cfg = Phi3Config(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        max_position_embeddings=c.max_position_embeddings,
        original_max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(rope.get("rope_theta", 10000.0))},
        tie_word_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id,
        attention_dropout=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        hidden_act=c.hidden_act,
    )
    phi = Phi3ForCausalLM(cfg).eval()
    src = model.state_dict()
    dst: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": src["model.embed_tokens.weight"],
        "model.norm.weight": src["model.norm.weight"],
    }
    if "lm_head.weight" in src:
        dst["lm_head.weight"] = src["lm_head.weight"]
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        dst[p + "input_layernorm.weight"] = src[p + "input_layernorm.weight"]
        dst[p + "post_attention_layernorm.weight"] = src[p + "post_attention_layernorm.weight"]
        dst[p + "self_attn.qkv_proj.weight"] = torch.cat([src[p + f"self_attn.{n}_proj.weight"] for n in ("q", "k", "v")], dim=0)
        dst[p + "self_attn.o_proj.weight"] = src[p + "self_attn.o_proj.weight"]
        dst[p + "mlp.gate_up_proj.weight"] = torch.cat([src[p + "mlp.gate_proj.weight"], src[p + "mlp.up_proj.weight"]], dim=0)
        dst[p + "mlp.down_proj.weight"] = src[p + "mlp.down_proj.weight"]
    missing, unexpected = phi.load_state_dict(dst, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"cannot map the Llama weights onto Phi-3: missing {missing}, unexpected {unexpected}")
    if cfg.tie_word_embeddings:
        phi.tie_weights()
    return phi


def write_gguf(model: Any, out: str | Path, arch: str = "llama", name: str = "longsearch-testbed") -> Path:
    """Write a transformers Llama model (``LlamaForCausalLM``) as a float32 GGUF of ``arch`` (``llama`` or ``phi3``)."""
    import gguf

    if arch not in ARCHS:
        raise ValueError(f"architecture {arch!r}: choose one of {', '.join(ARCHS)}")
    c = model.config
    if getattr(c, "model_type", None) != "llama":
        raise ValueError(f"a Llama model is needed, this one is {getattr(c, 'model_type', None)!r}")
    n_head, n_kv = int(c.num_attention_heads), int(c.num_key_value_heads)
    head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // n_head)
    if head_dim * n_head != c.hidden_size:
        raise ValueError("llama.cpp's llama and phi3 architectures need head_dim × heads = hidden_size")
    rope = dict(getattr(c, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"the model already has RoPE scaling ({rope.get('rope_type')}): write the plain model")
    sd = {k: v.detach().to("cpu").float().numpy() for k, v in model.state_dict().items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(out, arch=arch)
    w.add_name(name)
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    w.add_context_length(int(c.max_position_embeddings))
    w.add_embedding_length(int(c.hidden_size))
    w.add_block_count(int(c.num_hidden_layers))
    w.add_feed_forward_length(int(c.intermediate_size))
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    w.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    n_vocab = int(c.vocab_size)
    special = {int(c.bos_token_id): "<s>", int(c.eos_token_id): "</s>"}
    if getattr(c, "pad_token_id", None) is not None:
        special[int(c.pad_token_id)] = "<pad>"
    tokens, scores, types = _vocab(n_vocab, special)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(int(c.bos_token_id))
    w.add_eos_token_id(int(c.eos_token_id))
    w.add_unk_token_id(0)
    if getattr(c, "pad_token_id", None) is not None:
        w.add_pad_token_id(int(c.pad_token_id))
    w.add_add_bos_token(False)

    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if "lm_head.weight" in sd and not getattr(c, "tie_word_embeddings", False):
        w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(int(c.num_hidden_layers)):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        q, k, v = (sd[p + f"self_attn.{n}_proj.weight"] for n in ("q", "k", "v"))
        w.add_tensor(b + "attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(b + "ffn_down.weight", sd[p + "mlp.down_proj.weight"])
        gate, up = sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]
        if arch == "llama":
            w.add_tensor(b + "attn_q.weight", _llama_to_gguf_qk(q, n_head))
            w.add_tensor(b + "attn_k.weight", _llama_to_gguf_qk(k, n_kv))
            w.add_tensor(b + "attn_v.weight", v)
            w.add_tensor(b + "ffn_gate.weight", gate)
            w.add_tensor(b + "ffn_up.weight", up)
        else:
            w.add_tensor(b + "attn_qkv.weight", np.concatenate([q, k, v], axis=0))
            w.add_tensor(b + "ffn_up.weight", np.concatenate([gate, up], axis=0))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def testbed_gguf(out: str | Path, model: str | None = None, arch: str = "llama", force: bool = False) -> Path:
    """``longsearch testbed gguf``: the testbed (or ``model``, a small Llama directory) as a GGUF file at ``out``,
    written whole or not at all; an existing file is replaced only with ``force``."""
    from ..atomic import atomic_path, destination_exists
    from ..errors import InputError
    from ..models import load_model

    out = Path(out)
    if arch not in ARCHS:
        raise InputError(f"--arch {arch!r}: choose one of {', '.join(ARCHS)}")
    if out.is_dir():
        raise InputError(f"{out} is a directory: --out names the .gguf file to write")
    if not force and destination_exists(out):
        raise InputError(f"{out} already exists: choose another --out or pass --force to replace it")
    lm = load_model(model, device="cpu", dtype="float32")
    if getattr(lm.model.config, "model_type", None) != "llama":
        raise InputError(f"{model} is a {lm.model.config.model_type!r} model: testbed gguf writes Llama models only")
    with atomic_path(out) as tmp:
        write_gguf(lm.model, tmp, arch=arch, name="longsearch-testbed" if model is None else Path(str(model)).name)
    return out


__all__ = ["ARCHS", "phi3_from_llama", "testbed_gguf", "write_gguf"]
