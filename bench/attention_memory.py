"""Do the attention-side baselines stay within their memory budget?

One forward (``logits_to_keep=1``) of a small Llama (hidden 256, 8 heads, 1 layer, float32, CPU) with an
attention-side baseline (``rerope`` by default) at each length and each ``--attention-memory`` budget, against the
plain SDPA forward: the peak tensor memory allocated during the forward, counted from the PyTorch profiler's
allocator records (``longsearch.memory.AllocatorPeak``), and the query block the budget gives. The score maps of a
block take at most the budget; the sequence-wide tensors (rotated queries and keys, values, output in fp32:
6 × heads × head dim × 4 bytes per token) come on top.

    python bench/attention_memory.py --lengths 4k,8k --budgets 64MiB,256MiB,1GiB

Prints a table and writes it to bench/results/attention_memory.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _report import emit_table

from longsearch.lengths import format_length, parse_lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="4k,8k")
    parser.add_argument("--budgets", default="64MiB,256MiB,1GiB")
    parser.add_argument("--method", default="rerope")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "results" / "attention_memory.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers as T
    from rich.console import Console

    from longsearch import attention as A
    from longsearch.memory import AllocatorPeak
    from longsearch.models import model_geometry

    torch.manual_seed(0)
    heads, hidden = 8, 256
    cfg = T.LlamaConfig(
        vocab_size=1000,
        hidden_size=hidden,
        intermediate_size=512,
        num_hidden_layers=1,
        num_attention_heads=heads,
        max_position_embeddings=1024,
    )
    model = T.LlamaForCausalLM(cfg).eval()
    g = model_geometry(model.config)
    rows = []
    for n in parse_lengths(args.lengths):
        x = torch.randint(0, 1000, (1, n), generator=torch.Generator().manual_seed(n))
        with torch.no_grad(), AllocatorPeak() as plain:
            model(x, logits_to_keep=1)
        rows.append([format_length(n), "sdpa (none)", "–", "–", f"{plain.bytes / 2**20:,.0f}", "–", "–"])
        for text in args.budgets.split(","):
            budget = A.parse_memory(text)
            method = A.make_attention_method(args.method, g, 4 * n)
            method.block_memory = budget
            t0 = time.perf_counter()
            with torch.no_grad(), A.attention_method(model, method), AllocatorPeak() as peak:
                model(x, logits_to_keep=1)
            seconds = time.perf_counter() - t0
            sequence_wide = 6 * heads * (hidden // heads) * 4 * n
            rows.append(
                [
                    format_length(n),
                    method.label,
                    text,
                    str(A.query_block(budget, 1, heads, n)),
                    f"{peak.bytes / 2**20:,.0f}",
                    f"{(peak.bytes - plain.bytes) / budget:.2f}",
                    f"{seconds:.1f}",
                ]
            )
            rows[-1].append(f"{sequence_wide / 2**20:,.1f}")
        rows[-len(args.budgets.split(",")) - 1].append("")
    emit_table(
        Console(),
        "attention baselines: peak memory against the block budget",
        [
            "length",
            "method",
            "budget",
            "queries per block",
            "peak (MiB)",
            "(peak − sdpa peak) / budget",
            "seconds",
            "sequence-wide fp32 (MiB)",
        ],
        rows,
        [
            f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__}, {args.threads} thread(s); "
            f"model: Llama, hidden {hidden}, {heads} heads, 1 layer, float32; one forward with logits_to_keep=1. Peak = tensor "
            "memory allocated during the forward (profiler allocator records)."
        ],
        ["Seconds include the profiler's recording overhead."],
        args.out,
        left=("length", "method", "budget"),
    )


if __name__ == "__main__":
    main()
