"""llama.cpp itself loads what ``longsearch export --format gguf`` writes and computes what transformers computes.

Runs when ``llama_cpp`` (llama-cpp-python, which builds llama.cpp from source) is importable:
``bench/consumers.sh`` installs it; ``bench/llama_cpp_check.py`` prints the same measurements as a table.
For the ``llama`` and ``phi3`` architectures: the testbed written as GGUF (``longsearch testbed gguf``), 4×
factors exported into it (``longsearch export … --format gguf``), llama.cpp's logits on the same token ids
against transformers' own longrope model made by ``longsearch export --format hf`` from the same factors —
at 4× the window (a context above the original: the long factors) and within the window (the short ones).
"""

from __future__ import annotations

import pytest
from consumer_code import llama_cpp_available, llama_cpp_check

pytestmark = pytest.mark.skipif(not llama_cpp_available(), reason="llama_cpp not installed: run bench/consumers.sh")

REL_TOL = 2e-3  # max |Δlogit| / max |logit|: bench/results/llama_cpp.md has the measured values


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_llama_cpp_logits_equal_transformers_longrope(arch, run_cli, capsys, tmp_path):
    def cli(*args: str) -> None:
        assert run_cli(*args) == 0, capsys.readouterr().err

    r = llama_cpp_check(arch, tmp_path, cli)
    assert r["hf_rope_type"] == "longrope"
    # 4× the window: llama.cpp's context exceeds the original, it takes the long factors, as transformers does
    assert r["long"]["max_rel"] < REL_TOL and r["long"]["argmax_agreement"] >= 0.99, r["long"]
    # within the window both use the short factors
    assert r["short"]["max_rel"] < REL_TOL and r["short"]["argmax_agreement"] >= 0.99, r["short"]
    # the comparison can fail: the file without the factors is far from transformers with them
    assert r["without_factors"]["max_rel"] > 20 * REL_TOL, r["without_factors"]
