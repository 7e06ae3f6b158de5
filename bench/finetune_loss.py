"""Does finetune's loss still build length × vocabulary logits?

One training micro-batch (forward + backward) of a small Llama with a Llama-3-sized vocabulary (128,256 entries,
hidden 256, 1 layer, float32, CPU), at each length: the full-logits loss (``full_logits_loss``: what finetune
computed before, ``out.logits[:, :-1].float()`` then cross entropy) against the chunked loss finetune uses
(``_window_loss``: lm_head per chunk of positions, each chunk recomputed in the backward pass). Memory is counted
from the PyTorch profiler's allocator records (``longsearch.memory.AllocatorPeak``): the peak of tensor memory alive
at once during the step and its largest single allocation; both losses' values are printed to show they agree.

    python bench/finetune_loss.py --lengths 1k,2k

Prints a table and writes it to bench/results/finetune_loss.md.
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

VOCAB = 128256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="1k,2k")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "results" / "finetune_loss.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers as T
    from rich.console import Console

    from longsearch.finetune import LOSS_CHUNK_BYTES, _window_loss, full_logits_loss
    from longsearch.memory import AllocatorPeak

    torch.manual_seed(0)
    cfg = T.LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=131072
    )
    model = T.LlamaForCausalLM(cfg).train()
    rows = []
    for n in parse_lengths(args.lengths):
        ids = torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(n))
        inputs = {"input_ids": ids, "loss_weight": torch.ones(1, n)}
        for name in ("full logits", "chunked"):
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            with AllocatorPeak() as peak:
                loss = full_logits_loss(model, inputs) if name == "full logits" else _window_loss(model, inputs)[0]
                loss.backward()
            seconds = time.perf_counter() - t0
            rows.append(
                [
                    format_length(n),
                    name,
                    f"{float(loss.detach()):.6f}",
                    f"{peak.bytes / 2**20:,.0f}",
                    f"{peak.largest / 2**20:,.0f}",
                    f"{(n - 1) * VOCAB * 4 / 2**20:,.0f}",
                    f"{seconds:.1f}",
                ]
            )
    emit_table(
        Console(),
        "finetune loss: full logits vs chunked",
        ["length", "loss", "value", "peak tensor memory (MiB)", "largest allocation (MiB)", "length × vocab fp32 (MiB)", "seconds"],
        rows,
        [
            f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__}, {args.threads} thread(s); "
            f"model: Llama, hidden 256, 1 layer, vocab {VOCAB:,}, float32, one row per micro-batch, forward + backward. "
            f"Chunk budget: {LOSS_CHUNK_BYTES / 2**20:.0f} MiB of fp32 logits. Memory from the profiler's allocator records "
            "(peak of tensors alive at once during the step; the largest single allocation)."
        ],
        ["Seconds include the profiler's recording overhead; compare memory, not time."],
        args.out,
        left=("length", "loss"),
    )


if __name__ == "__main__":
    main()
