"""What the searched factors are worth once trained: mixed context window training against its alternatives.

On the testbed (window 256), at equal steps and tokens per step (``--steps``, one long row of
``--long-length`` tokens or ``long_length / 256`` short rows per step):

* (a) searched factors + mixed context window training (``--short-ratio 0.5``: half the steps short rows with
  the original RoPE, half long rows with the searched factors) — LongRoPE2's recipe;
* (b) searched factors + long-only training (``--short-ratio 0``);
* (c) YaRN (β 32/1, its m) + the same mixed training;
* (d) searched factors, no training; and YaRN, no training.

The searched factors are the README quick start's (``longsearch evolve --target 2k --budget quick``: GA, 20
candidates; run here unless ``--factors`` is given; ``--search-budget`` picks another budget, e.g. ``200evals``).
The committed results (bench/results/finetune.md) used that default ``quick`` search; the report names the
budget of the search it used (read from the search run's config.json). Each model is then scored on held-out
needles (pass key, held-out prose, another seed than training, depths 0.1 / 0.5 / 0.9, ``--samples`` per
depth) at 1×, 4×, 8× and 16× the window, and on the perplexity of one fixed final segment (128 tokens) of a
held-out document at each length — with its own RoPE: the trained directories as transformers loads them (longrope config), the untrained rows with the
factors applied by longsearch (the same arithmetic).

    python bench/finetune.py                      # ≈ 20 min on 2 CPU cores
    python bench/finetune.py --steps 50 --samples 4 --out /tmp/ft-smoke

Every piece is cached under ``--out`` (a search, each training, each evaluation): an interrupted benchmark
continues. Writes bench/results/finetune.md, finetune.json and finetune.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from longsearch.evaluate import build_methods, run_eval
from longsearch.factors import RopeFactors, load_factors
from longsearch.lengths import format_length, parse_length
from longsearch.models import load_config, load_model, model_geometry

LENGTH_MULTIPLES = (1, 4, 8, 16)
DEPTHS = (0.1, 0.5, 0.9)


def _run(cmd: list[str], log: Path) -> float:
    """Run a longsearch command, its output to ``log``; returns its wall time; stops the benchmark if it fails."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code != 0:
        sys.exit(f"failed ({code}): {' '.join(cmd)} — see {log}")
    return time.perf_counter() - t0


def _longsearch(*args: str) -> list[str]:
    return [sys.executable, "-m", "longsearch.cli", *args]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--factors", help="searched factors (default: run the README quick-start search at 8×)")
    ap.add_argument("--search-budget", default="quick", help="budget of that search (default quick, as the README quick start)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--long-length", default="2k")
    ap.add_argument("--answer-weight", type=float, default=4.0, help="as the testbed's own training recipe weighs answers")
    ap.add_argument("--samples", type=int, default=14, help="needle documents per depth and length (3 depths)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="outputs/bench-finetune")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    long_length = parse_length(args.long_length)
    g = model_geometry(load_config(None))
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    # the searched factors and YaRN's, both for the long length
    if args.factors:
        searched = Path(args.factors)
    else:
        searched = out / "search" / "best.json"
        cached = out / "search" / "config.json"
        if searched.is_file() and cached.is_file() and json.loads(cached.read_text()).get("budget") != args.search_budget:
            sys.exit(f"{out / 'search'} was searched with another budget than {args.search_budget}: give another --out")
        if not searched.is_file():
            print(f"search: longsearch evolve --target {format_length(long_length)} --budget {args.search_budget}", flush=True)
            timings["search"] = _run(
                _longsearch(
                    "evolve", "--target", str(long_length), "--budget", args.search_budget, "--out", str(out / "search"), "--force"
                ),
                out / "search.log",
            )
    factors = load_factors(searched, geometry=g, target_length=long_length)
    yarn = out / "yarn.json"
    RopeFactors.from_method("yarn", g, long_length).save(yarn)

    train_common = ["--steps", str(args.steps), "--lr", str(args.lr), "--answer-weight", str(args.answer_weight)]
    train_common += ["--long-length", str(long_length), "--seed", str(args.seed), "--save-every", str(max(1, args.steps // 4))]
    trainings = {
        "a": ("searched + mixed training", searched, "0.5"),
        "b": ("searched + long-only training", searched, "0"),
        "c": ("YaRN + mixed training", yarn, "0.5"),
    }
    for key, (label, fac, ratio) in trainings.items():
        run = out / f"train-{key}"
        if (run / "model" / "config.json").is_file():
            continue
        if (run / "finetune.json").is_file():
            cmd = _longsearch("finetune", "--resume", str(run))
        else:
            cmd = _longsearch("finetune", "--factors", str(fac), "--out", str(run), "--short-ratio", ratio, *train_common)
        print(f"training ({key}) {label} …", flush=True)
        timings[f"train-{key}"] = _run(cmd, out / f"train-{key}.log")

    configs = [
        ("a", "searched + mixed training", out / "train-a" / "model", out / "train-a" / "model" / "longsearch_factors.json"),
        ("b", "searched + long-only training", out / "train-b" / "model", out / "train-b" / "model" / "longsearch_factors.json"),
        ("c", "YaRN + mixed training", out / "train-c" / "model", out / "train-c" / "model" / "longsearch_factors.json"),
        ("d", "searched, no training", None, searched),
        ("d-yarn", "YaRN, no training", None, yarn),
    ]
    lengths = [m * g.original_length for m in LENGTH_MULTIPLES]
    rows = []
    for key, label, model_dir, fac in configs:
        cache = out / f"eval-{key}.json"
        if cache.is_file():
            rows.append(json.loads(cache.read_text()))
            continue
        print(f"scoring ({key}) {label} …", flush=True)
        t0 = time.perf_counter()
        lm = load_model(str(model_dir) if model_dir else None, device="cpu", dtype="float32")
        # the factors only (the first is plain RoPE), as transformers applies them; the segment as measured before
        methods = build_methods(lm.geometry, factor_files=[fac], serving=["per-forward"])[1:]
        res = run_eval(lm, methods, lengths, depths=DEPTHS, samples=args.samples, seed=args.seed + 4242, template="passkey", segment=256)
        label_m = methods[0].label
        row = {"key": key, "label": label, "model": str(model_dir) if model_dir else "testbed", "factors": str(fac), "cells": {}}
        for n in lengths:
            nll, acc = res.needle_mean(label_m, n)
            seg = res.segment(label_m, n)
            row["cells"][str(n)] = {"accuracy": acc, "nll": nll, "segment_ppl": seg.ppl}
        row["segment_tokens"] = res.settings["segment_tokens"]
        row["seconds"] = time.perf_counter() - t0
        cache.write_text(json.dumps(row, indent=1))
        rows.append(row)

    # report
    states = {k: json.loads((out / f"train-{k}" / "finetune.json").read_text()) for k in trainings}
    cmd = "python bench/finetune.py" + "".join(
        f" {flag} {val}"
        for flag, val, default in (
            ("--steps", args.steps, 400),
            ("--lr", args.lr, 5e-4),
            ("--long-length", args.long_length, "2k"),
            ("--answer-weight", args.answer_weight, 4.0),
            ("--samples", args.samples, 14),
            ("--seed", args.seed, 0),
            ("--factors", args.factors, None),
            ("--search-budget", args.search_budget, "quick"),
        )
        if val != default
    )
    head = "| model | " + " | ".join(f"{n // g.original_length}× ({format_length(n)})" for n in lengths) + " |"
    sep = "|---" * (len(lengths) + 1) + "|"

    def table(fmt) -> list[str]:
        return [head, sep] + [f"| ({r['key']}) {r['label']} | " + " | ".join(fmt(r["cells"][str(n)]) for n in lengths) + " |" for r in rows]

    train_times = {k: states[k].get("seconds") for k in states}
    search_config = searched.parent / "config.json"  # a run directory's: what the search was asked
    search = json.loads(search_config.read_text()) if search_config.is_file() else {}
    searched_how = ""
    if "budget" in search:
        searched_how = f"searched by {search.get('optimizer')}, budget {search['budget']}, "
        searched_how += f"{search.get('samples')} documents per evaluation, seed {search.get('seed')}; "
    lines = [
        "# Mixed context window training on the testbed (bench/finetune.py)",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, CPU, fp32. Factors: `{searched}` ({searched_how}scale "
        f"{factors.scale:g}, m = {factors.attention_factor:.3f}); training: {args.steps} steps × one micro-batch of "
        f"{long_length} tokens (one long row, or {long_length // g.original_length} short rows of {g.original_length}), "
        f"lr {args.lr:g} cosine, answer weight {args.answer_weight:g}, needle share 0.5, seed {args.seed}; "
        f"training seconds: " + ", ".join(f"({k}) {v:.0f}" for k, v in train_times.items() if v) + ".  ",
        f"Held-out: pass key, held-out prose, seed {args.seed + 4242}, depths {', '.join(map(str, DEPTHS))}, "
        f"{args.samples} documents per depth ({args.samples * len(DEPTHS)} per length); segment: the last "
        f"{rows[0].get('segment_tokens', '?')} tokens of one held-out document cut to each length (half the window, so "
        "that the 1× column has context before it).",
        "",
        "Needle accuracy · answer NLL:",
        "",
        *table(lambda c: f"{c['accuracy']:.2f} · {c['nll']:.2f}"),
        "",
        "Perplexity of the fixed final segment:",
        "",
        *table(lambda c: f"{c['segment_ppl']:.2f}"),
        "",
        f"Wall time of this invocation: {(time.perf_counter() - t_start) / 60:.1f} min (cached pieces not rerun).",
        "",
    ]
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "finetune.md").write_text("\n".join(lines))
    (results / "finetune.json").write_text(
        json.dumps({"command": cmd, "search": search, "rows": rows, "timings": timings, "train_seconds": train_times}, indent=1) + "\n"
    )
    _plot(rows, lengths, g.original_length, results / "finetune.png")
    print("\n".join(lines))


def _plot(rows: list[dict], lengths: list[int], window: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), layout="constrained")
    xs = np.asarray(lengths) / window
    for r in rows:
        style = "--" if r["key"].startswith("d") else "-"
        for ax, field in zip(axes, ("accuracy", "nll", "segment_ppl"), strict=True):
            ax.plot(xs, [r["cells"][str(n)][field] for n in lengths], style, marker="o", label=f"({r['key']}) {r['label']}")
    for ax, title in zip(axes, ("needle accuracy", "answer NLL (nats/token)", "final-segment perplexity"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}×" for x in xs])
        ax.set_title(title)
        ax.set_xlabel("length / original window")
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
