"""Fixtures shared by several test modules, and the test tiers.

Two tiers: ``python -m pytest -q`` runs everything (CI); ``python -m pytest -q -m "not slow" -n 2`` is the fast tier for
the edit–test loop. A test is ``slow`` when it is marked so, when its module is one of :data:`SLOW_MODULES` (Ray
clusters, kill-and-resume, the real Gemma model, the GPU bench's smoke run), when it uses a fixture of
:data:`SLOW_FIXTURES` (a whole search run in a subprocess, the Gemma tokenizer), or when its own code starts
processes (``subprocess``, ``Popen``, ``ray.init``, a helper that runs the CLI in a child process) — so a new test of that kind
lands in the slow tier without anyone remembering to mark it.
"""

from __future__ import annotations

import inspect
import re

import pytest
import torch

SLOW_MODULES = frozenset(
    {
        "test_bench_gpu",  # bench/gpu.py --smoke: a search, an eval and a memory probe in subprocesses
        "test_cluster",  # a real two-node Ray cluster
        "test_faults",  # SIGKILL at every write point, then resume
        "test_gemma3_real",  # the real Gemma 3 270M (dequantized GGUF)
        "test_gguf_models",  # GGUF models through every command
        "test_llama_cpp",  # llama.cpp's own loader
        "test_pool",  # Ray pools: device errors, placement, start-up limits
        "test_workers",  # Ray pools: deaths, timeouts, dispatch
    }
)
SLOW_FIXTURES = frozenset({"finished_run", "reference", "gemma_tok", "gguf", "cluster", "ray_session"})
_STARTS_PROCESSES = re.compile(r"\bsubprocess\.|\bray\.init\(|\bPopen\(|_popen\(|_run_cli_subprocess\(|torchrun")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: subprocesses, Ray clusters, kill-and-resume or real models (the full tier only)")


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


_helpers: dict[str, re.Pattern | None] = {}


def _process_helpers(module) -> re.Pattern | None:
    """A pattern matching calls of the module's (or an imported helper's) functions that start processes."""
    name = module.__name__
    if name not in _helpers:
        names = [
            n
            for n, f in vars(module).items()
            if inspect.isfunction(f) and not n.startswith("test_") and _STARTS_PROCESSES.search(_source(f))
        ]
        _helpers[name] = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\(") if names else None
    return _helpers[name]


def _starts_processes(item) -> bool:
    """The test's own code starts processes, or calls a helper that does."""
    fn, module = getattr(item, "function", None), getattr(item, "module", None)
    src = _source(fn) if fn is not None else ""
    if _STARTS_PROCESSES.search(src):
        return True
    helpers = _process_helpers(module) if module is not None else None
    return bool(helpers and helpers.search(src))


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        if module in SLOW_MODULES or SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())) or _starts_processes(item):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_byte_llama_dir(tmp_path_factory) -> str:
    """A 1-layer random Llama (window 256, rotary dim 16) with the testbed's byte tokenizer, saved offline."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from longsearch.tiny.tokenizer import build_tokenizer

    directory = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=259,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        bos_token_id=256,
        eos_token_id=257,
        pad_token_id=258,
    )
    LlamaForCausalLM(cfg).save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return str(directory)


@pytest.fixture
def run_cli(monkeypatch):
    """Run ``longsearch ARGS…`` in this process through the real entry point; return its exit code."""
    import sys

    from longsearch import cli

    def run(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["longsearch", *args])
        try:
            cli.main()
        except SystemExit as e:
            return int(e.code or 0)
        return 0

    return run
