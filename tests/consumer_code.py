"""Run the serving engines' own RoPE code on an exported config, without installing the engines.

vLLM and SGLang need CUDA and hundreds of packages to import, but their longrope rotary embedding is plain
PyTorch. From a wheel downloaded with ``pip download --no-deps`` (``bench/consumers.sh`` puts them in
``.cache/consumers``), this module takes, by parsing the wheel's source:

* the ``elif scaling_type == "longrope":`` branch of the engine's ``get_rope`` factory: which keys of the
  rope settings it reads and how it calls the class;
* the class it calls (``Phi3LongRoPEScaledRotaryEmbedding``) and the helpers it uses (``rotate_neox``,
  SGLang's ``_get_rope_param``);

and executes them unchanged. Only the engine's environment is stood in for: its logger, and vLLM's
``get_current_vllm_config()``, which the class asks for ``max_model_len``. The numbers come from the engines'
own code, so a key the export misspells or a factor the engine reads differently shows up as a difference.
"""

from __future__ import annotations

import ast
import logging
import math
import os
import types
import typing
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("LONGSEARCH_CONSUMERS", ROOT / ".cache" / "consumers"))

VLLM_FACTORY = "vllm/model_executor/layers/rotary_embedding/__init__.py"
VLLM_CLASS = "vllm/model_executor/layers/rotary_embedding/phi3_long_rope_scaled_rope.py"
VLLM_COMMON = "vllm/model_executor/layers/rotary_embedding/common.py"
SGLANG_FACTORY = "sglang/srt/layers/rotary_embedding/factory.py"
SGLANG_CLASS = "sglang/srt/layers/rotary_embedding/rope_variant.py"
SGLANG_UTILS = "sglang/srt/layers/rotary_embedding/utils.py"


def wheel(name: str) -> Path | None:
    """The newest ``name-*.whl`` in the consumers cache, or None."""
    found = sorted(CACHE.glob(f"{name}-*.whl")) if CACHE.is_dir() else []
    return found[-1] if found else None


def _source(whl: Path, member: str) -> ast.Module:
    with zipfile.ZipFile(whl) as z:
        return ast.parse(z.read(member).decode("utf-8"), filename=f"{whl.name}:{member}")


def _top(tree: ast.Module, name: str) -> ast.stmt:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return node
    raise LookupError(f"{name} not found")


def _branch(func: ast.FunctionDef, variable: str, value: str) -> list[ast.stmt]:
    """The body of the ``if``/``elif VARIABLE == "VALUE":`` branch inside ``func``."""
    for node in ast.walk(func):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            t = node.test
            if (
                isinstance(t.left, ast.Name)
                and t.left.id == variable
                and len(t.comparators) == 1
                and isinstance(t.comparators[0], ast.Constant)
                and t.comparators[0].value == value
            ):
                return node.body
    raise LookupError(f"no branch {variable} == {value!r} in {func.name}")


def _exec(nodes: list[ast.stmt], namespace: dict, filename: str) -> dict:
    module = ast.Module(body=list(nodes), type_ignores=[])
    ast.fix_missing_locations(module)
    exec(compile(module, filename, "exec"), namespace)
    return namespace


def _namespace() -> dict:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    return {
        "math": math,
        "torch": torch,
        "nn": nn,
        "F": F,
        "logger": logging.getLogger("consumer"),
        "List": list,
        "Optional": typing.Optional,
        "Tuple": tuple,
        "Union": typing.Union,
        "Dict": dict,
        "Any": typing.Any,
        "__name__": "consumer_code",
    }


def read_keys(branch: list[ast.stmt], dict_name: str) -> set[str]:
    """The keys a branch reads from ``dict_name``: subscripts, ``.get`` calls and ``k in (...)`` filters."""
    keys: set[str] = set()
    for node in ast.walk(ast.Module(body=branch, type_ignores=[])):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == dict_name
            and isinstance(node.slice, ast.Constant)
        ):
            keys.add(node.slice.value)
        if isinstance(node, ast.Call):
            args = node.args
            if (
                isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == dict_name
                and args
                and isinstance(args[0], ast.Constant)
            ):
                keys.add(args[0].value)
            if (
                isinstance(node.func, ast.Name)
                and len(args) >= 2
                and isinstance(args[0], ast.Name)
                and args[0].id == dict_name
                and isinstance(args[1], ast.Constant)
            ):
                keys.add(args[1].value)  # _get_rope_param(rope_scaling, "key", ...)
        if isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.In) and isinstance(node.comparators[0], ast.Tuple):
            keys |= {e.value for e in node.comparators[0].elts if isinstance(e, ast.Constant)}
    return keys


def _factory_locals(rope_parameters: dict, head_size: int, max_position: int) -> dict:
    """The local variables an engine's ``get_rope`` has set when it reaches its longrope branch."""
    import torch

    return {
        "scaling_type": "longrope",
        "head_size": head_size,
        "max_position": max_position,
        "base": rope_parameters.get("rope_theta", 10000),
        "is_neox_style": True,
        "dtype": torch.float32,
        "rotary_dim": int(head_size * rope_parameters.get("partial_rotary_factor", 1.0)),
    }


class Engine(typing.NamedTuple):
    name: str
    version: str
    keys: set[str]  # what its longrope branch reads from the rope settings
    build: typing.Callable[..., typing.Any]  # (rope_parameters, head_size, max_position, max_model_len) -> module


def vllm() -> Engine | None:
    whl = wheel("vllm")
    if whl is None:
        return None
    factory = _top(_source(whl, VLLM_FACTORY), "get_rope")
    branch = _branch(factory, "scaling_type", "longrope")
    cls_tree = _source(whl, VLLM_CLASS)
    rotate = _top(_source(whl, VLLM_COMMON), "rotate_neox")

    def build(rope_parameters: dict, head_size: int, max_position: int, max_model_len: int):

        ns = _namespace()
        ns["init_logger"] = logging.getLogger
        config = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=max_model_len))
        ns["get_current_vllm_config"] = lambda: config
        _exec([rotate], ns, VLLM_COMMON)
        _exec([_top(cls_tree, "Phi3LongRoPEScaledRotaryEmbedding")], ns, VLLM_CLASS)
        # what get_rope computes before its branches: base from rope_theta, rotary_dim from the head
        ns.update(_factory_locals(rope_parameters, head_size, max_position), rope_parameters=rope_parameters)
        _exec(branch, ns, VLLM_FACTORY)
        return ns["rotary_emb"]

    return Engine("vLLM", whl.name.split("-")[1], read_keys(branch, "rope_parameters"), build)


def sglang() -> Engine | None:
    whl = wheel("sglang")
    if whl is None:
        return None
    factory_tree = _source(whl, SGLANG_FACTORY)
    factory = _top(factory_tree, "get_rope")
    branch = _branch(factory, "scaling_type", "longrope")
    cls_tree = _source(whl, SGLANG_CLASS)
    utils = _source(whl, SGLANG_UTILS)

    def build(rope_parameters: dict, head_size: int, max_position: int, max_model_len: int):

        ns = _namespace()
        _exec([_top(utils, "rotate_neox")], ns, SGLANG_UTILS)
        _exec([_top(factory_tree, "_get_rope_param")], ns, SGLANG_FACTORY)
        _exec([_top(cls_tree, "Phi3LongRoPEScaledRotaryEmbedding")], ns, SGLANG_CLASS)
        # SGLang's Llama passes base = rope_parameters["rope_theta"] and rope_scaling = the rope settings
        ns.update(_factory_locals(rope_parameters, head_size, max_position), rope_scaling=rope_parameters)
        _exec(branch, ns, SGLANG_FACTORY)
        return ns["rotary_emb"]

    return Engine("SGLang", whl.name.split("-")[1], read_keys(branch, "rope_scaling"), build)


def engines() -> list[Engine]:
    return [e for e in (vllm(), sglang()) if e is not None]


# ---------------------------------------------------------------- llama.cpp (llama-cpp-python)


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except Exception:
        return False
    return True


def llama_cpp_logits(gguf_path: str | Path, ids: list[int], n_ctx: int, threads: int = 2):
    """llama.cpp's logits for every position of ``ids``, with a context of ``n_ctx`` tokens (which is what makes
    llama.cpp choose the long or the short factors)."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(
        model_path=str(gguf_path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        logits_all=True,
        verbose=False,
        n_threads=threads,
        n_threads_batch=threads,
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()


def compare_logits(ours, ref) -> dict:
    """Max absolute and relative (to the largest reference logit) difference, and argmax agreement."""
    import numpy as np

    diff = float(np.abs(ours - ref).max())
    return {
        "max_abs": diff,
        "max_rel": diff / float(np.abs(ref).max()),
        "argmax_agreement": float((ours.argmax(-1) == ref.argmax(-1)).mean()),
    }


def haystack_ids(n: int) -> list[int]:
    """``n`` token ids of the testbed's byte vocabulary: <s> and the bytes of a shipped haystack text."""
    import gzip

    text = gzip.decompress((ROOT / "longsearch" / "data" / "haystacks" / "devils-dictionary.txt.gz").read_bytes())
    return [256, *list(text[10000 : 10000 + n - 1])]


def searched_like_factors(window: int = 256, scale: int = 4):
    """Factors of the shape searches find on the testbed: exact head, YaRN beyond, m ≠ YaRN's; short ≠ 1."""
    import numpy as np

    from longsearch.factors import RopeFactors
    from longsearch.models import load_config, model_geometry
    from longsearch.rope import rescale

    g = model_geometry(load_config(None))
    lam = rescale("yarn", g, window * scale).lam.copy()
    lam[:5] = 1.0
    return RopeFactors(
        long_factor=lam,
        short_factor=np.linspace(1.0, 1.25, g.n_freq),
        original_length=window,
        target_length=window * scale,
        base=g.base,
        rotary_dim=g.rotary_dim,
        attention_factor=1.31,
        provenance={"method": "searched-like test factors"},
    )


def transformers_logits(model_dir, ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def llama_cpp_check(arch: str, work: Path, cli, window: int = 256, scale: int = 4) -> dict:
    """The whole user path for one architecture, through ``cli(*args)`` (the longsearch command line):
    ``testbed gguf``, ``export --format gguf`` and ``export --format hf`` of the same factors, then llama.cpp
    against transformers at ``scale``× the window (long factors), within it (short), and the file without factors."""
    from longsearch.models import load_model
    from longsearch.tiny.gguf import phi3_from_llama

    factors = searched_like_factors(window, scale)
    fjson = work / "factors.json"
    factors.save(fjson)
    plain = work / f"testbed-{arch}.gguf"
    cli("testbed", "gguf", "--arch", arch, "--out", str(plain))
    exported = work / f"testbed-{arch}-{scale}x.gguf"
    cli("export", str(fjson), "--format", "gguf", "--gguf", str(plain), "--out", str(exported))
    source = work / f"hf-{arch}"
    model = load_model(None, device="cpu", dtype="float32").model
    (model if arch == "llama" else phi3_from_llama(model)).save_pretrained(source)
    hf = work / f"hf-{arch}-{scale}x"
    cli("export", str(fjson), "--format", "hf", "--model-dir", str(source), "--out", str(hf))
    n = window * scale
    ids = haystack_ids(n)
    short_ids = ids[:window]
    return {
        "long": compare_logits(llama_cpp_logits(exported, ids, n_ctx=n), transformers_logits(hf, ids)),
        "short": compare_logits(llama_cpp_logits(exported, short_ids, n_ctx=window), transformers_logits(hf, short_ids)),
        "without_factors": compare_logits(llama_cpp_logits(plain, ids, n_ctx=n), transformers_logits(hf, ids)),
        "hf_rope_type": __import__("json").loads((hf / "config.json").read_text())["rope_parameters"]["rope_type"],
    }
