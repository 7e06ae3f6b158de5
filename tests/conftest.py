"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch


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
