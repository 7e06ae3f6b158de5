"""Does scoring one candidate cost more than the forward pass itself?

For each length: the median time of ``longsearch.scoring.score`` on a one-document needle set with a
random λ patched in (patching, forward, answer-token logits, NLL, restoring), against the median time of
a bare forward of the same model at the same length with ``logits_to_keep=1`` (no KV cache); and the
peak memory each adds on top of the loaded model. Targets: time ratio ≤ 1.10, memory ratio ≤ 1.20.

CPU: a small Llama (hidden 256, 4 layers, vocab 32000 so that an lm_head over every position would show)
at 1k, 4k and 16k tokens, float32. GPU (only when CUDA is available): a Llama-3-8B-shaped model with random
bf16 weights (hidden 4096, 32 layers, GQA 32/8, vocab 128256) at 32k, 64k and 128k.

CPU peak memory is the process's peak resident set during the call (Linux ``VmHWM``, reset before it)
minus the resident set before it, measured in fresh subprocesses (median of 3, after a short warm-up call,
with glibc told to mmap large blocks) so that allocator caches from earlier calls hide nothing.
CPU timings on a shared machine vary by ±25 % from run to run: compare the ratio, not single numbers. GPU peak memory is ``torch.cuda.max_memory_allocated`` minus the
memory allocated before the call.

    python bench/scoring.py                 # CPU part (and the GPU part where CUDA is available)
    python bench/scoring.py --lengths 1k,4k --repeats 3 --threads 2

Prints a table and writes it to bench/results/scoring.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from longsearch.lengths import format_length, parse_length

CPU_SHAPE = dict(
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    vocab_size=32000,
    rope_theta=10000.0,
    max_position_embeddings=2048,
)
GPU_SHAPE = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    rope_theta=500000.0,
    max_position_embeddings=8192,
)


def build_model(shape: dict, device: str, dtype: torch.dtype):
    import transformers as T

    from longsearch.models import keep_rope_fp32

    shape = dict(shape)
    theta = shape.pop("rope_theta")
    cfg = T.LlamaConfig(**shape, rope_parameters={"rope_type": "default", "rope_theta": theta}, attn_implementation="sdpa")
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = T.LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model.eval()
    keep_rope_fp32(model)
    return model


def build_set(length: int, seed: int = 0):
    from longsearch.needles import build_needle_set
    from longsearch.tiny.tokenizer import build_tokenizer

    return build_needle_set(build_tokenizer(), length, 1, template="magic-number", seed=seed)


def candidate(model, seed: int):
    """A random searched-looking λ (non-decreasing, 1 … 2s) and m."""
    from longsearch.models import model_geometry
    from longsearch.rope import Rescale

    g = model_geometry(model.config)
    rng = np.random.default_rng(seed)
    return Rescale(np.sort(rng.uniform(1.0, 8.0, g.n_freq)), 1.2)


def run_score(model, ns, seed: int) -> None:
    from longsearch.scoring import score

    result = score(model, ns, candidate(model, seed), target_length=ns.length, batch_size=1)
    if not np.isfinite(result.nll):
        raise RuntimeError(f"non-finite score in the benchmark: {result.error}")


def run_forward(model, ids: torch.Tensor) -> None:
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=False, logits_to_keep=1)
        float(out.logits[0, -1, 0])  # wait for the device


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_both(model, ns, device: str, repeats: int) -> tuple[float, float]:
    ids = torch.from_numpy(ns.samples[0].input_ids)[None].to(device)
    run_score(model, ns, 99)  # warm-up (kernels, allocator, caches)
    run_forward(model, ids)
    t_score, t_fwd = [], []

    def timed(fn) -> float:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t0

    for r in range(repeats):  # interleaved, alternating which goes first, so drift in load hits both alike
        if r % 2 == 0:
            t_score.append(timed(lambda r=r: run_score(model, ns, r)))
            t_fwd.append(timed(lambda: run_forward(model, ids)))
        else:
            t_fwd.append(timed(lambda: run_forward(model, ids)))
            t_score.append(timed(lambda r=r: run_score(model, ns, r)))
    return statistics.median(t_score), statistics.median(t_fwd)


# ---------------------------------------------------------------- memory


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_peak_child(mode: str, length: int, threads: int) -> None:
    """In a fresh process: the peak resident memory one call adds (printed as JSON)."""
    torch.set_num_threads(threads)
    model = build_model(CPU_SHAPE, "cpu", torch.float32)
    ns = build_set(length)
    ids = torch.from_numpy(ns.samples[0].input_ids)[None]
    # one call at a short length first, so that imports and one-time initialisation are not counted
    warm = build_set(512)
    if mode == "score":
        run_score(model, warm, 1)
    else:
        run_forward(model, torch.from_numpy(warm.samples[0].input_ids)[None])
    del warm
    gc.collect()
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    if mode == "score":
        run_score(model, ns, 0)
    else:
        run_forward(model, ids)
    peak = _status_kb("VmHWM")
    print(json.dumps({"peak_mb": (peak - before) / 1024}))


def cpu_peak(mode: str, length: int, threads: int, runs: int = 3) -> float:
    """Median over ``runs`` fresh processes; large blocks are mmapped so that freed memory leaves the RSS."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    peaks = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, __file__, "--_child", mode, "--lengths", str(length), "--threads", str(threads)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        peaks.append(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])
    return statistics.median(peaks)


def gpu_peak(fn) -> float:
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


# ---------------------------------------------------------------- the table


def measure(device: str, lengths: list[int], repeats: int, threads: int) -> list[dict]:
    rows = []
    if device == "cpu":
        torch.set_num_threads(threads)
        model = build_model(CPU_SHAPE, "cpu", torch.float32)
    else:
        model = build_model(GPU_SHAPE, "cuda", torch.bfloat16)
    for n in lengths:
        ns = build_set(n)
        t_score, t_fwd = time_both(model, ns, device, repeats)
        if device == "cpu":
            m_score, m_fwd = cpu_peak("score", n, threads), cpu_peak("forward", n, threads)
        else:
            ids = torch.from_numpy(ns.samples[0].input_ids)[None].to(device)
            m_score = gpu_peak(lambda m=model, s=ns: run_score(m, s, 0))
            m_fwd = gpu_peak(lambda m=model, x=ids: run_forward(m, x))
        rows.append(
            dict(
                device=device,
                length=n,
                score_s=t_score,
                forward_s=t_fwd,
                time_ratio=t_score / t_fwd,
                score_mb=m_score,
                forward_mb=m_fwd,
                mem_ratio=m_score / m_fwd if m_fwd > 0 else float("nan"),
            )
        )
        print(_row(rows[-1]), flush=True)
    del model
    gc.collect()
    return rows


HEADER = (
    "| device | length | score one candidate (s) | bare forward (s) | time ratio | score peak (MiB) | "
    "forward peak (MiB) | memory ratio |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
)


def _row(r: dict) -> str:
    return (
        f"| {r['device']} | {format_length(r['length'])} | {r['score_s']:.3f} | {r['forward_s']:.3f} | "
        f"{r['time_ratio']:.3f} | {r['score_mb']:.0f} | {r['forward_mb']:.0f} | {r['mem_ratio']:.3f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default=None, help="CPU lengths (default 1k,4k,16k)")
    ap.add_argument("--gpu-lengths", default="32k,64k,128k")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-gpu", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "scoring.md"))
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        cpu_peak_child(args._child, parse_length(args.lengths), args.threads)
        return
    lengths = [parse_length(x) for x in (args.lengths or "1k,4k,16k").split(",")]
    print(HEADER, flush=True)
    rows = measure("cpu", lengths, args.repeats, args.threads)
    gpu_name = None
    if torch.cuda.is_available() and not args.no_gpu:
        gpu_name = torch.cuda.get_device_name(0)
        rows += measure("cuda", [parse_length(x) for x in args.gpu_lengths.split(",")], args.repeats, args.threads)
    lines = [
        "# Scoring cost vs a bare forward",
        "",
        f"`python bench/scoring.py --repeats {args.repeats} --threads {args.threads}` on {platform.processor() or platform.machine()}"
        f" ({os.cpu_count()} CPUs; torch {torch.__version__}, {args.threads} thread(s))"
        + (f" and {gpu_name}" if gpu_name else "; no GPU here")
        + ". Median of the repeats (interleaved); one needle document per call; peak memory is what each call adds to the"
        " loaded model (CPU: peak RSS increase, median of 3 fresh processes; GPU: peak allocated increase).",
        "CPU model: Llama, hidden 256, 4 layers, vocab 32000, float32. GPU model: Llama-3-8B shape, random bf16 weights.",
        "Targets: time ratio ≤ 1.10, memory ratio ≤ 1.20.",
        "CPU timings on a shared machine vary by about ±25 % between runs; a ratio below 1 is that noise (the forward"
        " inside the scorer is the same computation).",
        "",
        HEADER,
        *[_row(r) for r in rows],
        "",
    ]
    out = Path(args.out)
    from longsearch.atomic import atomic_write_text

    atomic_write_text(out, "\n".join(lines))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
