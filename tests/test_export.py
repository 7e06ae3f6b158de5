"""Export: transformers reloads what we write and computes what longsearch's patch computes; GGUF and CSV round trips."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from longsearch.errors import ExportError, FactorsError
from longsearch.export import (
    GGUF_FREQS,
    GGUF_LONG,
    GGUF_SHORT,
    export,
    export_csv,
    export_gguf,
    export_hf,
    export_vllm,
    read_gguf_factors,
    short_csv_path,
)
from longsearch.factors import RopeFactors, load_factors
from longsearch.models import apply_rope, load_config, model_geometry, restore_rope
from longsearch.rope import RopeGeometry, attention_factor

torch.set_num_threads(1)

WINDOW = 64
TARGET = 256


def _factors(g: RopeGeometry, *, m: float | None = None, short: bool = True) -> RopeFactors:
    """Non-trivial long and short factors, so a swapped or ignored vector shows in the logits."""
    n = g.n_freq
    long = np.linspace(1.0, 5.5, n) ** 1.3
    short_f = np.linspace(1.0, 1.4, n) if short else np.ones(n)
    s = TARGET / g.original_length
    return RopeFactors(
        long_factor=long,
        short_factor=short_f,
        original_length=g.original_length,
        target_length=TARGET,
        base=g.base,
        rotary_dim=g.rotary_dim,
        attention_factor=m if m is not None else attention_factor("longrope", s, g.original_length),
        provenance={"method": "test"},
    )


def _save_llama(path, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=WINDOW,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path)
    return model


def _logits(model, n: int, seed: int = 1) -> torch.Tensor:
    ids = torch.randint(0, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids).logits


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    _save_llama(path)
    return path


# ---------------------------------------------------------------- hf


def test_hf_model_dir_reloads_with_same_logits(llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    g = model_geometry(load_config(str(llama_dir)))
    f = _factors(g)
    cfg_before = _sha(llama_dir / "config.json")
    out = tmp_path / "exported"
    result = export_hf(f, out, model_dir=llama_dir)
    assert (out / "config.json").is_file() and (out / "longsearch_factors.json").is_file()
    assert _sha(llama_dir / "config.json") == cfg_before  # never modified in place
    weights = next(llama_dir.glob("*.safetensors"))
    assert (out / weights.name).stat().st_ino != weights.stat().st_ino  # a file of its own, never the original's inode
    assert _sha(out / weights.name) == _sha(weights)
    assert any("short factors: taken from the source" in n for n in result.notes)

    cfg = json.loads((out / "config.json").read_text())
    rp = cfg["rope_parameters"]
    assert rp["rope_type"] == "longrope" and cfg["max_position_embeddings"] == TARGET
    assert rp["original_max_position_embeddings"] == WINDOW and rp["factor"] == TARGET / WINDOW
    assert rp["attention_factor"] == pytest.approx(f.attention_factor) and rp["rope_theta"] == g.base

    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert exported.model.rotary_emb.rope_type == "longrope"
    ours = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    apply_rope(ours, f)
    for n in (WINDOW // 2, WINDOW, WINDOW + 40):  # short factors below/at the window, long above
        torch.testing.assert_close(
            exported(torch.arange(n)[None] % 97).logits, ours(torch.arange(n)[None] % 97).logits, rtol=1e-5, atol=1e-5
        )
    # the comparison can fail: the unpatched model differs above the window
    restore_rope(ours)
    assert not torch.allclose(_logits(ours, WINDOW + 40), _logits(exported, WINDOW + 40), atol=1e-3)


def test_hf_config_only_from_model(llama_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

    g = model_geometry(load_config(str(llama_dir)))
    f = _factors(g, m=1.3)
    out = tmp_path / "cfg"
    result = export_hf(f, out, model=str(llama_dir))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "longsearch_factors.json"]
    assert any("config only" in n for n in result.notes)
    cfg = AutoConfig.from_pretrained(out)
    assert cfg.rope_parameters["long_factor"] == pytest.approx(list(f.long_factor))
    model = LlamaForCausalLM(cfg).eval()
    src = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    model.load_state_dict(src.state_dict())
    apply_rope(src, f)
    torch.testing.assert_close(_logits(model, WINDOW + 20), _logits(src, WINDOW + 20), rtol=1e-5, atol=1e-5)


def test_hf_phi3_top_level_original_window(tmp_path):
    from transformers import AutoModelForCausalLM, Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    cfg = Phi3Config(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=WINDOW,
        original_max_position_embeddings=WINDOW,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    src_dir = tmp_path / "phi3"
    Phi3ForCausalLM(cfg).eval().save_pretrained(src_dir)
    g = model_geometry(load_config(str(src_dir)))
    assert g.original_length == WINDOW
    f = _factors(g)
    out = tmp_path / "phi3-out"
    export_hf(f, out, model_dir=src_dir)
    raw = json.loads((out / "config.json").read_text())
    assert raw["original_max_position_embeddings"] == WINDOW == raw["rope_parameters"]["original_max_position_embeddings"]
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    ours = AutoModelForCausalLM.from_pretrained(src_dir).eval()
    apply_rope(ours, f)
    for n in (WINDOW - 8, WINDOW + 30):
        torch.testing.assert_close(_logits(exported, n), _logits(ours, n), rtol=1e-5, atol=1e-5)


def test_hf_refuses_existing_and_mismatched(llama_dir, tmp_path):
    g = model_geometry(load_config(str(llama_dir)))
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export_hf(_factors(g), out, model_dir=llama_dir)
    assert (out / "keep.txt").read_text() == "mine"
    export_hf(_factors(g), out, model_dir=llama_dir, force=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()

    other = RopeGeometry(g.rotary_dim * 2, g.base, g.original_length)
    with pytest.raises(FactorsError, match="rotary dim"):
        export_hf(_factors(other), tmp_path / "bad", model_dir=llama_dir)
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------- vllm


def test_vllm_overrides_carry_m_as_mscale(llama_dir, tmp_path):
    g = model_geometry(load_config(str(llama_dir)))
    custom = _factors(g, m=1.05)
    r = export_vllm(custom, tmp_path / "v1", model_dir=llama_dir)
    assert r.warnings == []
    over = json.loads((tmp_path / "v1" / "hf_overrides.json").read_text())
    assert over == r.hf_overrides and (tmp_path / "v1" / "hf_overrides.json") in r.paths
    assert over["max_position_embeddings"] == TARGET
    rp = over["rope_parameters"]
    for key in ("short_factor", "long_factor", "original_max_position_embeddings"):
        assert key in rp
    assert rp["short_mscale"] == rp["long_mscale"] == pytest.approx(1.05)
    cfg = json.loads((tmp_path / "v1" / "config.json").read_text())
    assert cfg["rope_parameters"]["short_mscale"] == cfg["rope_parameters"]["long_mscale"] == pytest.approx(1.05)
    assert cfg["rope_parameters"]["attention_factor"] == pytest.approx(1.05)
    assert "--hf-overrides '" in r.serve_command and f"--max-model-len {TARGET}" in r.serve_command
    assert r.serve_command.startswith(f"vllm serve {tmp_path / 'v1'} ")
    assert json.loads(r.serve_command.split("--hf-overrides '")[1].rstrip("'")) == over
    # the hf export stays free of keys transformers does not know
    h = export_hf(custom, tmp_path / "h", model=str(llama_dir))
    assert "short_mscale" not in json.loads((h.out / "config.json").read_text())["rope_parameters"]


def _save_gemma3_config(path):
    """A Gemma3-style multimodal config (text settings, RoPE per layer type, under text_config); no weights needed."""
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=WINDOW,
        sliding_window=16,
    )
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    Gemma3Config(text_config=text, vision_config=vision).save_pretrained(path)


def _merge_like_vllm(cfg: dict, overrides: dict) -> dict:
    """vLLM's ``--hf-overrides`` on a config, as a dict: nested configs and dicts are merged key by key, the rest set."""
    import copy

    out = copy.deepcopy(cfg)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_like_vllm(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def test_vllm_multimodal_text_config(tmp_path):
    from transformers import AutoConfig

    from longsearch.export import add_mscale_keys
    from longsearch.models import patch_config_dict

    src = tmp_path / "gemma3"
    _save_gemma3_config(src)
    raw = json.loads((src / "config.json").read_text())
    assert "rope_parameters" not in raw and "full_attention" in raw["text_config"]["rope_parameters"]
    g = model_geometry(load_config(str(src)))
    f = _factors(g, m=1.11)
    r = export_vllm(f, tmp_path / "v", model_dir=src)
    cfg = json.loads((tmp_path / "v" / "config.json").read_text())
    assert "rope_parameters" not in cfg and "max_position_embeddings" not in cfg  # the outer config is untouched
    rp = cfg["text_config"]["rope_parameters"]
    full, sliding = rp["full_attention"], rp["sliding_attention"]
    assert full["rope_type"] == "longrope" and full["long_factor"] == pytest.approx(list(f.long_factor))
    assert full["short_mscale"] == full["long_mscale"] == pytest.approx(1.11) == full["attention_factor"]
    assert sliding == raw["text_config"]["rope_parameters"]["sliding_attention"]  # local RoPE kept, no mscale
    assert cfg["text_config"]["max_position_embeddings"] == TARGET

    # hf_overrides.json targets text_config: applied to the original config as vLLM applies them, they give
    # the exported config's text settings
    over = json.loads((tmp_path / "v" / "hf_overrides.json").read_text())
    assert over == r.hf_overrides and set(over) == {"text_config"}
    assert set(over["text_config"]) == {"rope_parameters", "max_position_embeddings"}
    merged = _merge_like_vllm(raw, over)
    for key in ("rope_parameters", "max_position_embeddings"):
        assert merged["text_config"][key] == cfg["text_config"][key]
    assert json.loads(r.serve_command.split("--hf-overrides '")[1].rstrip("'")) == over

    # transformers reads the exported config back with longrope for full attention
    back = AutoConfig.from_pretrained(tmp_path / "v").get_text_config()
    assert back.rope_parameters["full_attention"]["rope_type"] == "longrope"
    assert back.rope_parameters["full_attention"]["short_factor"] == pytest.approx(list(f.short_factor))

    # the dict helpers alone, on a config dict: mscale keys land under text_config only
    patched = add_mscale_keys(patch_config_dict(raw, f), f)
    assert "rope_parameters" not in patched
    assert patched["text_config"]["rope_parameters"]["full_attention"]["long_mscale"] == pytest.approx(1.11)


def test_export_never_shares_files_with_the_model_unless_asked(llama_dir, tmp_path):
    from longsearch.export import _clone_or_copy

    g = model_geometry(load_config(str(llama_dir)))
    f = _factors(g)
    weights = next(llama_dir.glob("*.safetensors"))
    before = _sha(weights)
    out = tmp_path / "copied"
    r = export_hf(f, out, model_dir=llama_dir)
    assert any("copied" in n and "link" not in n.split("(")[1] for n in r.notes)
    with open(out / weights.name, "r+b") as fh:  # something saving into the export in place
        fh.write(b"\0" * 64)
    assert _sha(weights) == before  # the original model is untouched
    # a reflink or a copy, whichever the file system gives: a separate file with the same bytes
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(bytes(range(256)) * 100)
    assert _clone_or_copy(a, b) in ("reflink", "copy") and b.read_bytes() == a.read_bytes()
    assert a.stat().st_ino != b.stat().st_ino
    linked = export_hf(f, tmp_path / "linked", model_dir=llama_dir, link=True)
    assert (tmp_path / "linked" / weights.name).stat().st_ino == weights.stat().st_ino
    assert any("rewrites the original" in n for n in linked.notes)


def test_link_links_weights_and_every_file_of_1_mib_or_more(llama_dir, tmp_path):
    """What --link links is what its notes say: weight files of any size, and every other file of 1 MiB or more."""
    import shutil

    from longsearch.export import LINKED_FILES

    model = tmp_path / "m"
    shutil.copytree(llama_dir, model)
    (model / "big.txt").write_bytes(b"x" * (1 << 20))  # not a weight, 1 MiB: linked
    (model / "almost.txt").write_bytes(b"x" * ((1 << 20) - 1))  # not a weight, below 1 MiB: copied
    (model / "tiny.bin").write_bytes(b"w")  # a weight suffix, 1 byte: linked
    r = export_hf(_factors(model_geometry(load_config(str(model)))), tmp_path / "o", model_dir=model, link=True)

    def same(name: str) -> bool:
        return (tmp_path / "o" / name).stat().st_ino == (model / name).stat().st_ino

    assert same("big.txt") and same("tiny.bin") and same("model.safetensors")
    assert not same("almost.txt") and not same("generation_config.json")
    note = next(n for n in r.notes if "hard-linked" in n)
    assert "hard-linked 3 of them" in note and LINKED_FILES in note
    assert "1 MiB or more" in LINKED_FILES and ".safetensors" in LINKED_FILES


def test_vllm_refuses_an_unknown_config_layout_with_a_next_step():
    from longsearch.export import _longrope_params_of

    assert _longrope_params_of({"rope_parameters": {"rope_type": "longrope"}}) == {"rope_type": "longrope"}
    for cfg in ({}, {"text_config": {"hidden_size": 8}}, {"rope_parameters": "longrope"}):
        with pytest.raises(ExportError, match=r"not supported for vLLM; export with --format hf .* by hand with --hf-overrides$"):
            _longrope_params_of(cfg)


def test_vllm_and_sglang_own_rope_code_match_transformers(llama_dir, tmp_path):
    """The engines' longrope code, taken from their wheels, on the exported config, against transformers' own."""
    from consumer_code import engines
    from transformers import AutoModelForCausalLM
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    found = engines()
    if not found:
        pytest.skip("no vLLM / SGLang wheel in .cache/consumers: run bench/consumers.sh")
    g = model_geometry(load_config(str(llama_dir)))
    f = _factors(g, m=1.07)  # not the engines' default √(1 + ln s / ln L): it must arrive through the keys
    out = tmp_path / "v"
    export_vllm(f, out, model_dir=llama_dir)
    cfg = json.loads((out / "config.json").read_text())
    rp = cfg["rope_parameters"]
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    heads, head_dim = cfg["num_attention_heads"], cfg["hidden_size"] // cfg["num_attention_heads"]
    gen = torch.Generator().manual_seed(3)
    for engine in found:
        missing = engine.keys - set(rp)
        assert missing <= set(), f"{engine.name} {engine.version} reads {sorted(missing)}, which the export does not write"
        assert {"short_mscale", "long_mscale"} <= engine.keys
        # long: the engine serves with max_model_len = target; short: within the original window
        for n, max_model_len in ((TARGET, TARGET), (WINDOW, WINDOW)):
            rot = engine.build(dict(rp), head_dim, cfg["max_position_embeddings"], max_model_len)
            q = torch.randn(n, heads * head_dim, generator=gen)
            k = torch.randn(n, heads * head_dim, generator=gen)
            pos = torch.arange(n)
            q_e, k_e = rot(pos, q.clone(), k.clone())
            x = torch.zeros(1, n, cfg["hidden_size"])
            cos, sin = model.model.rotary_emb(x, pos[None])
            qt = q.view(n, heads, head_dim).transpose(0, 1)[None]
            kt = k.view(n, heads, head_dim).transpose(0, 1)[None]
            q_t, k_t = apply_rotary_pos_emb(qt, kt, cos, sin)
            q_t = q_t[0].transpose(0, 1).reshape(n, -1)
            k_t = k_t[0].transpose(0, 1).reshape(n, -1)
            err = max((q_e - q_t).abs().max().item(), (k_e - k_t).abs().max().item())
            print(f"{engine.name} {engine.version} {n} tokens: max abs diff {err:.2e}")
            assert err < 1e-4, f"{engine.name} {engine.version} at {n} tokens: max |Δ| {err:.2e}"


# ---------------------------------------------------------------- csv / json


def test_csv_round_trip(tmp_path):
    g = RopeGeometry(64, 10000.0, 256)
    f = RopeFactors.from_method("yarn", g, 2048)
    out = tmp_path / "f.csv"
    r = export_csv(f, out)
    assert r.paths == [out, short_csv_path(out)]
    assert len(out.read_text().splitlines()) == g.n_freq
    back = load_factors(out, geometry=g, target_length=2048)
    np.testing.assert_array_equal(back.long_factor, f.long_factor)  # repr of floats round-trips exactly
    assert np.all(np.loadtxt(short_csv_path(out)) == 1.0)
    assert any("ones (the original RoPE" in n for n in r.notes)
    with pytest.raises(ExportError, match="already exists"):
        export_csv(f, out)


def test_export_dispatch_csv_source_and_json(llama_dir, tmp_path):
    g = model_geometry(load_config(str(llama_dir)))
    f = _factors(g, short=False)
    csv = tmp_path / "long.csv"
    export_csv(f, csv)
    with pytest.raises(FactorsError, match="--target"):
        export(csv, "json", tmp_path / "x.json")
    r = export(csv, "json", tmp_path / "x.json", model=str(llama_dir), target_length=TARGET)
    back = load_factors(r.out, geometry=g)
    np.testing.assert_array_equal(back.long_factor, f.long_factor)
    assert back.target_length == TARGET and back.attention_factor == pytest.approx(f.attention_factor)
    with pytest.raises(ExportError, match="unknown export format"):
        export(r.out, "onnx", tmp_path / "y")


# ---------------------------------------------------------------- gguf


def _write_gguf(path, arch="phi3", rotary_dim=16, *, extra_keys=True, rope_freqs=False, base=10000.0, ctx=WINDOW, kv=None):
    """A small GGUF file; ``kv`` adds keys (``{arch}`` in a name is the architecture): str, int (uint32) or float (float32)."""
    import gguf

    w = gguf.GGUFWriter(path, arch)
    w.add_string("general.name", "tiny")
    for key, value in (kv or {}).items():
        key = key.format(arch=arch)
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        else:
            w.add_float32(key, value)
    w.add_uint32(f"{arch}.context_length", ctx)
    if extra_keys:
        w.add_uint32(f"{arch}.embedding_length", 64)
        w.add_uint32(f"{arch}.attention.head_count", 4)
        w.add_uint32(f"{arch}.rope.dimension_count", rotary_dim)
        w.add_float32(f"{arch}.rope.freq_base", base)
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0])
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((3, 64)).astype(np.float32))
    w.add_tensor("blk.0.attn_q.weight", rng.standard_normal((64, 64)).astype(np.float16))
    if rope_freqs:
        w.add_tensor(GGUF_FREQS, np.ones(rotary_dim // 2, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _gguf_factors(rotary_dim=16, original=WINDOW) -> RopeFactors:
    return _factors(RopeGeometry(rotary_dim, 10000.0, original), m=1.2345)


def test_gguf_round_trip(tmp_path):
    import gguf

    src = tmp_path / "m.gguf"
    _write_gguf(src)
    before = _sha(src)
    f = _gguf_factors()
    out = tmp_path / "m-long.gguf"
    r = export_gguf(f, src, out)
    assert r.warnings == []  # phi3 reads these tensors
    assert _sha(src) == before
    long, short, meta = read_gguf_factors(out)
    assert long.dtype == np.float32 and long.shape == (8,)
    np.testing.assert_array_equal(long, f.long_factor.astype(np.float32))
    np.testing.assert_array_equal(short, f.short_factor.astype(np.float32))
    assert meta["phi3.context_length"] == TARGET
    assert meta["phi3.rope.scaling.original_context_length"] == WINDOW
    assert meta["phi3.rope.scaling.attn_factor"] == pytest.approx(1.2345, rel=1e-6)
    assert meta["phi3.rope.dimension_count"] == 16
    assert meta["phi3.rope.scaling.type"] == "longrope"  # llama-family architectures read the factors only with it

    a, b = gguf.GGUFReader(src), gguf.GGUFReader(out)
    assert b.get_field("phi3.rope.scaling.attn_factor").types[0] == gguf.GGUFValueType.FLOAT32
    assert b.get_field("phi3.context_length").types[0] == gguf.GGUFValueType.UINT32
    assert b.get_field("tokenizer.ggml.tokens").contents() == ["a", "b", "c"]
    assert b.get_field("general.name").contents() == "tiny"
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    assert set(tb) == set(ta) | {GGUF_LONG, GGUF_SHORT}
    for name, t in ta.items():  # every original tensor copied bit for bit, same type and shape
        assert tb[name].tensor_type == t.tensor_type
        np.testing.assert_array_equal(np.asarray(tb[name].data), np.asarray(t.data))
    assert tb[GGUF_LONG].tensor_type == gguf.GGMLQuantizationType.F32

    # exporting again over the output is refused, then replaces it with --force (new values)
    with pytest.raises(ExportError, match="already exists"):
        export_gguf(f, src, out)
    f2 = _gguf_factors()
    f2.long_factor = f2.long_factor * 2
    export_gguf(f2, out, tmp_path / "again.gguf")  # a file that already has factors: they are replaced
    long2, _, _ = read_gguf_factors(tmp_path / "again.gguf")
    np.testing.assert_allclose(long2, (f.long_factor * 2).astype(np.float32))
    assert [t.name for t in gguf.GGUFReader(tmp_path / "again.gguf").tensors].count(GGUF_LONG) == 1


def test_gguf_llama_arch_rope_freqs_and_fallback_dim(tmp_path):
    src = tmp_path / "llama.gguf"
    _write_gguf(src, arch="llama", rope_freqs=True)
    r = export_gguf(_gguf_factors(), src, tmp_path / "o.gguf")
    import gguf

    names = [t.name for t in gguf.GGUFReader(tmp_path / "o.gguf").tensors]
    assert GGUF_FREQS not in names and GGUF_LONG in names
    assert any("rope_freqs" in n for n in r.notes)
    # llama.cpp's llama loader reads the factor tensors under rope.scaling.type longrope, which the export writes
    assert r.warnings == []
    assert gguf.GGUFReader(tmp_path / "o.gguf").get_field("llama.rope.scaling.type").contents() == "longrope"


@pytest.mark.parametrize(
    ("arch", "reads"),
    [(a, True) for a in ("llama", "granite", "mistral3", "deci", "phi3", "minicpm3")] + [(a, False) for a in ("qwen2", "gemma3", "gpt2")],
)
def test_gguf_is_refused_for_architectures_whose_loader_ignores_the_factors(tmp_path, arch, reads):
    # the criterion is which llama.cpp loaders read the factor tensors, not the gguf package's tensor table; a file
    # whose loader would refuse the tensors (or run plain RoPE) is refused in one line before anything is written
    src = tmp_path / f"{arch}.gguf"
    _write_gguf(src, arch=arch)
    out = tmp_path / "o.gguf"
    if reads:
        r = export_gguf(_gguf_factors(), src, out)
        assert r.warnings == [] and out.is_file()
        return
    with pytest.raises(ExportError) as e:
        export_gguf(_gguf_factors(), src, out)
    message = str(e.value)
    assert "\n" not in message and repr(arch) in message and "llama" in message and "--format hf" in message
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_gguf_drops_scale_linear_and_yarn_keys(tmp_path):
    import gguf

    yarn = {
        "{arch}.rope.scaling.yarn_log_multiplier": 0.1,
        "{arch}.rope.scaling.yarn_ext_factor": 1.0,
        "{arch}.rope.scaling.yarn_attn_factor": 1.0,
        "{arch}.rope.scaling.yarn_beta_fast": 32.0,
        "{arch}.rope.scaling.yarn_beta_slow": 1.0,
    }
    legacy = {"{arch}.rope.scale_linear": 4.0}
    kept = {"{arch}.rope.scaling.finetuned": "no", "general.license": "mit"}
    src = tmp_path / "yarn.gguf"
    scaling = {"{arch}.rope.scaling.type": "yarn", "{arch}.rope.scaling.factor": 4.0}
    _write_gguf(src, arch="llama", kv={**yarn, **legacy, **kept, **scaling})
    before = {f.name: f.contents() for f in gguf.GGUFReader(src).fields.values()}
    for key in (*yarn, *legacy, *scaling):  # the input really has them: the test can fail
        assert key.format(arch="llama") in before
    out = tmp_path / "o.gguf"
    r = export_gguf(_gguf_factors(), src, out)
    after = {f.name: f.contents() for f in gguf.GGUFReader(out).fields.values()}
    gone = {k.format(arch="llama") for k in (*yarn, *legacy, "{arch}.rope.scaling.factor")}
    assert not gone & set(after)
    assert after["llama.rope.scaling.type"] == "longrope"
    for key in kept:  # everything else is carried over
        assert after[key.format(arch="llama")] == before[key.format(arch="llama")]
    changed = {"llama.context_length", "llama.rope.scaling.type"}
    for key, value in before.items():
        if key not in gone and key not in changed and not key.startswith("GGUF."):
            assert after[key] == value, key
    notes = " | ".join(r.notes)
    assert "rope.scale_linear" in notes and "rope.scaling.factor" in notes
    assert all(k.format(arch="llama")[len("llama.") :] in notes for k in yarn)

    # a file with scale_linear alone (no scaling.factor, which llama.cpp would read first) loses it too
    plain = tmp_path / "linear.gguf"
    _write_gguf(plain, arch="llama", kv=legacy)
    r2 = export_gguf(_gguf_factors(), plain, tmp_path / "o2.gguf")
    assert gguf.GGUFReader(tmp_path / "o2.gguf").get_field("llama.rope.scale_linear") is None
    assert any("scale_linear" in n for n in r2.notes) and not any("yarn" in n for n in r2.notes)


@pytest.mark.parametrize("force", [True, False])
@pytest.mark.parametrize("case", ["out is the gguf", "out is a dir holding the gguf", "out is a symlink to the gguf", "out under the gguf"])
def test_gguf_refuses_every_overlap_of_out_and_input(tmp_path, case, force):
    models = tmp_path / "models"
    models.mkdir()
    src = models / "m.gguf"
    _write_gguf(src)
    out = {
        "out is the gguf": src,
        "out is a dir holding the gguf": models,
        "out is a symlink to the gguf": tmp_path / "link.gguf",
        "out under the gguf": src / "x.gguf",
    }[case]
    if case == "out is a symlink to the gguf":
        out.symlink_to(src)
    before = _snapshot(tmp_path)
    with pytest.raises(ExportError, match=r"--out .* (is the input GGUF itself|contains the input GGUF|is inside the input GGUF)"):
        export_gguf(_gguf_factors(), src, out, force=force)
    assert _snapshot(tmp_path) == before


def test_export_never_replaces_its_factors_source(tmp_path):
    run = tmp_path / "runs" / "run-1"
    run.mkdir(parents=True)
    g = RopeGeometry(16, 10000.0, WINDOW)
    _factors(g).save(run / "best.json")
    before = _snapshot(tmp_path)
    for source, out, fmt in (
        (run, run, "json"),  # the run directory itself
        (run, run.parent, "json"),  # what holds it
        (run / "best.json", run / "best.json", "json"),
        (run / "best.json", run, "longrope-csv"),
        (run / "best.json", run / "best.json" / "x.csv", "longrope-csv"),
    ):
        with pytest.raises(ExportError, match="the factors source"):
            export(source, fmt, out, force=True)
    assert _snapshot(tmp_path) == before
    assert export(run, "json").out == run / "export" / "factors.json"  # inside a run directory: the default


def test_gguf_refusals(tmp_path):
    src = tmp_path / "m.gguf"
    _write_gguf(src, rotary_dim=32)
    out = tmp_path / "o.gguf"
    with pytest.raises(ExportError, match="rotary dim 32"):
        export_gguf(_gguf_factors(16), src, out)
    assert not out.exists()
    assert not list(tmp_path.glob(".o.gguf*"))  # no temporary left behind

    bare = tmp_path / "bare.gguf"
    _write_gguf(bare, extra_keys=False)
    with pytest.raises(ExportError, match="rotary dimension is unknown"):
        export_gguf(_gguf_factors(), bare, out)

    other_window = tmp_path / "w.gguf"
    _write_gguf(other_window, rotary_dim=16, ctx=4096)
    with pytest.raises(ExportError, match="original window of 4096"):
        export_gguf(_gguf_factors(), other_window, out)

    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"hello, not a gguf")
    with pytest.raises(ExportError, match="not a readable GGUF"):
        export_gguf(_gguf_factors(), not_gguf, out)

    existing = tmp_path / "exists.gguf"
    existing.write_bytes(b"keep")
    with pytest.raises(ExportError, match="already exists"):
        export_gguf(_gguf_factors(16), src, existing)
    assert existing.read_bytes() == b"keep"


# ---------------------------------------------------------------- CLI


def test_cli_export(run_cli, capsys, tmp_path):
    src = tmp_path / "m.gguf"
    _write_gguf(src)
    factors = tmp_path / "best.json"
    _gguf_factors().save(factors)
    out = tmp_path / "out.gguf"
    assert run_cli("export", str(factors), "--format", "gguf", "--gguf", str(src), "--out", str(out)) == 0
    assert "short factors: taken from the source" in capsys.readouterr().out
    digest = _sha(out)
    assert run_cli("export", str(factors), "--format", "gguf", "--gguf", str(src), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "Traceback" not in err and _sha(out) == digest
    assert run_cli("export", str(factors), "-f", "gguf", "--gguf", str(src), "--out", str(out), "--force") == 0

    wrong = tmp_path / "wrong.json"
    _gguf_factors(32).save(wrong)
    assert run_cli("export", str(wrong), "-f", "gguf", "--gguf", str(src), "--out", str(tmp_path / "w.gguf")) == 2
    assert "rotary dim" in capsys.readouterr().err and not (tmp_path / "w.gguf").exists()
    assert run_cli("export", str(factors), "-f", "bogus", "--out", str(tmp_path / "b")) == 2
    assert "unknown export format" in capsys.readouterr().err


def test_patch_config_dict_phi3_legacy_rope_scaling_layer_types_and_text_config():
    from longsearch.models import longrope_rope_parameters, patch_config_dict

    f = _factors(RopeGeometry(16, 10000.0, WINDOW))
    params = longrope_rope_parameters(f)
    phi = patch_config_dict({"model_type": "phi3", "max_position_embeddings": WINDOW}, f)
    assert phi["original_max_position_embeddings"] == WINDOW and phi["max_position_embeddings"] == TARGET
    llama = patch_config_dict({"model_type": "llama", "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, f)
    assert "original_max_position_embeddings" not in llama
    assert llama["rope_scaling"] == llama["rope_parameters"] == params  # transformers lets rope_scaling win
    layers = {
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        }
    }
    gemma = patch_config_dict(layers, f)
    assert gemma["rope_parameters"]["full_attention"] == params
    assert gemma["rope_parameters"]["sliding_attention"]["rope_theta"] == 1e4
    # a multimodal config: the text model's entry changes, the outer config's keys stay
    mm = patch_config_dict({"model_type": "gemma3", "text_config": {"model_type": "gemma3_text", **layers}}, f)
    assert mm["text_config"]["rope_parameters"]["full_attention"] == params
    assert mm["text_config"]["max_position_embeddings"] == TARGET and "max_position_embeddings" not in mm


def test_default_out_and_run_directory_source(llama_dir, tmp_path):
    from longsearch.export import default_out

    g = model_geometry(load_config(str(llama_dir)))
    run = tmp_path / "run-1"
    run.mkdir()
    _factors(g, short=False).save(run / "best.json")
    assert default_out(run, "hf") == run / "export" / "hf"
    assert default_out(run, "gguf", "/m/phi.gguf") == run / "export" / "phi-run-1.gguf"
    assert default_out(run / "best.json", "json") == run / "best-export.json"
    r = export(run, "longrope-csv")
    assert r.out == run / "export" / "long_factors.csv" and r.out.is_file()
    assert any("did not search them" in n for n in r.notes)
    with pytest.raises(ExportError, match="already exists"):
        export(run, "longrope-csv")


def _snapshot(root) -> dict[str, str]:
    """Every entry under ``root``: files by content hash, symlinks by target, directories as such."""
    out = {}
    for p in sorted(root.rglob("*")):
        key = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[key] = "-> " + str(p.readlink())
        elif p.is_dir():
            out[key] = "dir"
        else:
            out[key] = _sha(p)
    return out


def _overlap_layout(tmp_path, llama_dir, case: str):
    """A model directory (a copy of ``llama_dir``) and an --out that overlaps it in the way ``case`` names."""
    import shutil

    root = tmp_path / "root"
    models = root / "models"
    model = models / "llama"
    shutil.copytree(llama_dir, model)
    if case == "out is the model dir":
        return model, model
    if case == "out contains the model dir":  # the audit's reproduction: --out models/ --model-dir models/llama
        return model, models
    if case == "out is the model dir's grandparent":
        return model, root
    if case == "out inside the model dir":
        return model, model / "exports" / "long"
    if case == "out is a symlink to the model dir":
        (root / "link").symlink_to(model, target_is_directory=True)
        return model, root / "link"
    if case == "out is a symlink to an ancestor":
        (root / "link").symlink_to(models, target_is_directory=True)
        return model, root / "link"
    if case == "model dir through a symlink into out":
        elsewhere = root / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "llama").symlink_to(model, target_is_directory=True)
        return elsewhere / "llama", models
    if case == "model dir spelled with ..":
        (models / "other").mkdir()
        return models / "other" / ".." / "llama", models
    raise AssertionError(case)


OVERLAPS = [
    "out is the model dir",
    "out contains the model dir",
    "out is the model dir's grandparent",
    "out inside the model dir",
    "out is a symlink to the model dir",
    "out is a symlink to an ancestor",
    "model dir through a symlink into out",
    "model dir spelled with ..",
]


@pytest.mark.parametrize("force", [True, False])
@pytest.mark.parametrize("fmt", ["hf", "vllm"])
@pytest.mark.parametrize("case", OVERLAPS)
def test_hf_and_vllm_refuse_every_overlap_of_out_and_model_dir(llama_dir, tmp_path, case, fmt, force):
    model, out = _overlap_layout(tmp_path, llama_dir, case)
    f = _factors(model_geometry(load_config(str(llama_dir))))
    before = _snapshot(tmp_path)
    assert "root/models/llama/model.safetensors" in before
    fn = export_hf if fmt == "hf" else export_vllm
    with pytest.raises(
        ExportError, match=r"--out .* (is the model directory itself|contains the model directory|is inside the model directory)"
    ):
        fn(f, out, model_dir=model, force=force)
    assert _snapshot(tmp_path) == before  # nothing written, moved or removed: the model is intact


def test_config_only_export_refuses_to_replace_a_local_model(llama_dir, tmp_path):
    import shutil

    model = tmp_path / "models" / "llama"
    shutil.copytree(llama_dir, model)
    f = _factors(model_geometry(load_config(str(llama_dir))))
    before = _snapshot(tmp_path)
    for out in (model, model.parent, tmp_path):
        with pytest.raises(ExportError, match="model directory"):
            export_hf(f, out, model=str(model), force=True)
    assert _snapshot(tmp_path) == before
    export_hf(f, tmp_path / "apart", model=str(model))  # apart from it: fine


def test_cli_overlap_exits_2_and_keeps_the_model(llama_dir, run_cli, capsys, tmp_path):
    model, out = _overlap_layout(tmp_path, llama_dir, "out contains the model dir")
    factors = tmp_path / "f.json"
    _factors(model_geometry(load_config(str(llama_dir)))).save(factors)
    before = _snapshot(tmp_path)
    args = ("export", str(factors), "--format", "hf", "--model-dir", str(model), "--out", str(out), "--force")
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert "contains the model directory" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _snapshot(tmp_path) == before
    # a sibling of the model directory does not overlap it: written as usual, the model untouched
    assert run_cli(*args[:-3], "--out", str(out / "llama-long")) == 0
    assert (out / "llama-long" / "config.json").is_file()
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if "llama-long" not in k} == before


# ---------------------------------------------------------------- the testbed as GGUF (tests/test_llama_cpp.py runs it)


def test_phi3_from_llama_is_the_same_function(tiny_byte_llama_dir):
    from transformers import AutoModelForCausalLM

    from longsearch.tiny.gguf import phi3_from_llama

    llama = AutoModelForCausalLM.from_pretrained(tiny_byte_llama_dir).eval()
    phi = phi3_from_llama(llama)
    assert phi.config.model_type == "phi3"
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(phi(ids).logits, llama(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_testbed_gguf_is_a_model_file_export_accepts(arch, run_cli, capsys, tmp_path):
    import gguf

    from longsearch.models import load_config, model_geometry

    out = tmp_path / f"tb-{arch}.gguf"
    assert run_cli("testbed", "gguf", "--arch", arch, "--out", str(out)) == 0, capsys.readouterr().err
    r = gguf.GGUFReader(out)
    assert r.get_field("general.architecture").contents() == arch
    assert r.get_field(f"{arch}.rope.scaling.type") is None  # a plain model file, as converters write them
    tokens = r.get_field("tokenizer.ggml.tokens").contents()
    assert tokens[65] == "<0x41>" and tokens[256] == "<s>" and len(tokens) == 260
    names = {t.name for t in r.tensors}
    assert ("blk.0.attn_qkv.weight" in names) == (arch == "phi3") and ("blk.0.attn_q.weight" in names) == (arch == "llama")
    g = model_geometry(load_config(None))
    from longsearch.export import gguf_geometry

    assert gguf_geometry(out) == g
    capsys.readouterr()
    assert run_cli("testbed", "gguf", "--arch", arch, "--out", str(out)) == 2  # exists: refused, untouched
    assert "already exists" in capsys.readouterr().err
    assert run_cli("testbed", "gguf", "--arch", "gpt2", "--out", str(tmp_path / "x.gguf")) == 2
    assert not (tmp_path / "x.gguf").exists()
