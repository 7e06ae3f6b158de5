"""Search quality per cost: which space and optimizer find factors that retrieve, for how many token-forwards?

For each scale (``--scales``, target = scale × the window) and each search (``--configs``, written
``SPACE/OPTIMIZER[@BUDGET][/full][/target][/even]``: ``/full`` turns racing off; ``/target`` searches as runs did
before served lengths — the pass key alone, scored at the target only, no validation —; ``/even`` weights the served
lengths equally; the others with evolve's defaults), ``longsearch evolve`` runs on the testbed
(or ``--model``) with ``--samples`` needle documents per evaluation and the budget ``--budget`` (default
``200evals``: 200 full evaluations' worth of token-forwards; early-stopped evaluations count for what they
ran). Its best factors, and the best it had after ¼ and ½ of its token-forwards, are then scored by this
script itself on two held-out needle sets the search never saw (``--heldout-samples`` documents each):

* ``project``: the project's pass-key template, another seed, uniform depths, held-out prose;
* ``foreign``: a pass key in another framing (another preamble, a shorter needle sentence), Python
  standard-library docstrings as the haystack, needles at 10 / 30 / 50 % depth — close to how an outside
  user would check the result. (Framings far from the testbed's training are not solved even inside its
  window: a "secret code" framing scored 0.35 at 256 tokens with plain RoPE, this one 0.85.)

Rows for PI, NTK, YaRN, plain RoPE and the two hand-made vectors of issue 9 (YaRN with λ = 1 on the first
6 frequencies; λ = 1 on the first 5 with m = 1.45) are scored on the same sets. Cost is counted in
token-forwards (documents actually run × tokens per document), which do not depend on the machine.

    python bench/search_quality.py                                    # the default configs, 4× 8× 16×
    python bench/search_quality.py --scales 4 --configs hybrid/ga,hybrid/random --budget 100evals
    python bench/search_quality.py --scales 4 --configs hybrid/ga@paper/full   # the paper budget, full scoring
    python bench/search_quality.py --scales 8,16 --configs hybrid/ga@100evals/target,hybrid/ga@100evals \\
        --runs outputs/bench-served --out bench/results/served_search.md     # before / after served lengths

Each search is an ordinary run directory under ``--runs`` (an interrupted benchmark continues where it
stopped); held-out scores are cached beside it. Prints a table and writes bench/results/search_quality.md,
search_quality.json and search_quality.png.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _report import emit_table

from longsearch.lengths import format_length
from longsearch.mix import default_lengths

DEFAULT_CONFIGS = (
    "hybrid/ga,hybrid/random,longrope2/ga,longrope/ga,yarn/nevergrad:CMA,hybrid/nevergrad:CMA,"
    "hybrid/nevergrad:TwoPointsDE,hybrid/optuna:TPE"
)
FOREIGN_TEMPLATE = "passkey-other-framing"


# ---------------------------------------------------------------- held-out needle sets


def stdlib_docstrings(max_chars: int = 3_000_000) -> str:
    """Docstrings of the Python standard library (modules, classes, functions), as paragraphs: a haystack
    that is on every machine with Python and that the testbed never saw."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    total = 0
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    text = " ".join(doc.split())
                    if text.isascii():
                        parts.append(text)
                        total += len(text)
        if total > max_chars:
            break
    return "\n\n".join(parts)


def register_foreign_template() -> None:
    from longsearch.needles import TEMPLATES, Template

    TEMPLATES[FOREIGN_TEMPLATE] = Template(
        FOREIGN_TEMPLATE,
        preamble="Find the pass key in the text below.",
        needle="The pass key is {value}.",
        question="What is the pass key? The pass key is ",
        value_digits=5,
        keyed=False,
        description="bench only: a pass key in another framing",
    )


def heldout_sets(tokenizer, length: int, n: int, cache: Path) -> dict:
    from longsearch.needles import build_needle_set, load_needle_set

    sets = {}
    for name in ("project", "foreign"):
        d = cache / f"{name}-{length}-{n}"
        if (d / "manifest.json").is_file():
            sets[name] = load_needle_set(d, tokenizer=tokenizer, length=length)
            continue
        if name == "project":
            ns = build_needle_set(tokenizer, length, n, template="passkey", seed=4242, depths="uniform", haystack="heldout")
        else:
            hay = cache / "stdlib-docstrings.txt"
            if not hay.is_file():
                hay.parent.mkdir(parents=True, exist_ok=True)
                hay.write_text(stdlib_docstrings())
            ns = build_needle_set(tokenizer, length, n, template=FOREIGN_TEMPLATE, seed=777, depths=[0.1, 0.3, 0.5], haystack=[str(hay)])
        ns.save(d)
        sets[name] = ns
    return sets


def hand_made(geometry, target: int) -> dict:
    from longsearch.rope import Rescale, rescale

    y = rescale("yarn", geometry, target)
    a = y.lam.copy()
    a[:6] = 1.0
    b = y.lam.copy()
    b[:5] = 1.0
    return {"hand: YaRN, λ=1 on first 6": Rescale(a, y.m), "hand: λ=1 on first 5, m=1.45": Rescale(b, 1.45)}


# ---------------------------------------------------------------- one search


FLAGS = ("full", "target", "even")


def parse_config(text: str, default_budget: str) -> tuple[str, str, str, bool, bool, bool]:
    """``SPACE/OPTIMIZER[@BUDGET][/full][/target][/even]`` -> (space, optimizer, budget, full, target-only, even)."""
    parts = text.strip().split("/")
    if len(parts) < 2 or any(f not in FLAGS for f in parts[2:]):
        raise SystemExit(f"config {text!r}: write SPACE/OPTIMIZER[@BUDGET][/full][/target][/even]")
    space, opt = parts[0], parts[1]
    full, target_only, even = "full" in parts[2:], "target" in parts[2:], "even" in parts[2:]
    budget = default_budget
    if "@" in opt:
        opt, budget = opt.split("@", 1)
    return space, opt, budget, full, target_only, even


def config_label(space: str, opt: str, budget: str, full: bool, target_only: bool, samples: int, even: bool = False) -> str:
    return f"{space}/{opt}@{budget}{'/full' if full else ''}{'/target' if target_only else ''}{'/even' if even else ''}/n{samples}"


def run_search(
    model, target, space, opt, budget, full, target_only, samples, seed, workers, runs: Path, even: bool = False, window: int = 0
):
    """One search. ``target_only``: as searches ran before served lengths — the pass key alone, uniform depths, scored
    at the target only, no validation (best.json the lowest search NLL). Otherwise evolve's defaults: every template
    the model solves in its window, spread depths, the served lengths with the long factors at each, a validation
    mix that chooses best.json and stops the search early. ``even``: the served lengths weighted equally instead of
    evolve's default (half on the target)."""
    from longsearch.evolve import EvolveOptions, run_evolve

    flags = f"{'-full' if full else ''}{'-target' if target_only else ''}{'-even' if even else ''}"
    name = f"{space}-{opt.replace(':', '-')}-{budget}{flags}-n{samples}-s{seed}"
    out = runs / f"{format_length(target)}" / name
    if (out / "final-bench.json").is_file():
        return out, json.loads((out / "final-bench.json").read_text())["minutes"]
    how: dict = {"template": "passkey", "depths": "uniform", "serve_lengths": "target", "validation_samples": 0} if target_only else {}
    if even:  # one weight per served length (evolve's default lengths: the window, its doublings, the target)
        how["serve_weights"] = ",".join("1" for _ in default_lengths(window, target))
    opts = EvolveOptions(
        model=model,
        target=target,
        space=space,
        budget=budget,
        optimizer=opt,
        samples=samples,
        seed=seed,
        workers=workers,
        out=out,
        heldout=False,
        racing=not full,
        **how,
    )
    if (out / "config.json").exists():
        opts = EvolveOptions(resume=out, workers=workers, heldout=False)
    t0 = time.perf_counter()
    run_evolve(opts)
    minutes = (time.perf_counter() - t0) / 60
    (out / "final-bench.json").write_text(json.dumps({"minutes": minutes}))
    return out, minutes


def trajectory(run: Path) -> tuple[list[dict], int, int]:
    """Per generation: token-forwards of the search so far (candidates only) and the best candidate's record."""
    from longsearch.runs import RunStore

    store = RunStore(run)
    records = store.read_journal().records
    cands = {r.id: r for r in records if r.kind == "candidate"}
    ckpts = store.checkpoints()
    history = json.loads(ckpts[-1][1].read_text())["history"] if ckpts else []
    out = []
    tf = 0
    by_gen: dict[int, int] = {}
    for r in cands.values():
        by_gen[r.generation] = by_gen.get(r.generation, 0) + (r.token_forwards or 0)
    for h in history:
        tf += by_gen.get(int(h["generation"]), 0)
        if h.get("best_id") is not None:
            out.append({"generation": int(h["generation"]), "token_forwards": tf, "best": cands[int(h["best_id"])]})
    return out, tf, len(cands)


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory or hub id (default: the testbed)")
    ap.add_argument("--scales", default="4,8,16")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="SPACE/OPTIMIZER[@BUDGET][/full][/target], comma-separated")
    ap.add_argument("--budget", default="200evals")
    ap.add_argument("--samples", type=int, default=8, help="needle documents per evaluation")
    ap.add_argument("--heldout-samples", type=int, default=40)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", default="outputs/bench-search")
    ap.add_argument("--out", default=str(HERE / "results" / "search_quality.md"))
    args = ap.parse_args()

    import ray
    import torch
    from rich.console import Console

    from longsearch.factors import load_factors
    from longsearch.models import load_model
    from longsearch.rope import Rescale, rescale
    from longsearch.runs import RunStore
    from longsearch.scoring import score

    console = Console()
    register_foreign_template()
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    lm = load_model(args.model, device="cpu", dtype="float32")
    g = lm.geometry
    scales = [int(s) for s in args.scales.split(",") if s.strip()]
    configs = [parse_config(c, args.budget) for c in args.configs.split(",") if c.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    runs = Path(args.runs)
    json_out = Path(args.out).with_suffix(".json")
    results = json.loads(json_out.read_text()) if json_out.is_file() else {}
    temp = tempfile.mkdtemp(prefix="lsbench-", dir="/tmp")
    ray.init(
        num_cpus=os.cpu_count() or 1,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp,
        object_store_memory=256 * 1024 * 1024,
        logging_level="ERROR",
    )

    def held(sets, r: Rescale, cache: dict, key: str) -> dict:
        if key in cache:
            return cache[key]
        out = {}
        for name, ns in sets.items():
            s = score(lm, ns, r, target_length=ns.length)
            out[name] = {"nll": s.nll, "accuracy": s.accuracy}
        cache[key] = out
        return out

    try:
        # inside the window: what the model can do at all on these sets (the ceiling of any extension)
        window_sets = heldout_sets(lm.tokenizer, g.original_length, args.heldout_samples, runs / "heldout")
        inside = results.setdefault("1", {"baselines": {}, "searches": {}})
        held(window_sets, rescale("none", g, g.original_length), inside["baselines"], "none")
        for scale in scales:
            target = g.original_length * scale
            sets = heldout_sets(lm.tokenizer, target, args.heldout_samples, runs / "heldout")
            res = results.setdefault(str(scale), {"baselines": {}, "searches": {}})
            for name in ("none", "pi", "ntk", "yarn"):
                held(sets, rescale(name, g, target), res["baselines"], name)
                held(window_sets, rescale(name, g, target), res.setdefault("window_baselines", {}), name)
            for name, r in hand_made(g, target).items():
                held(sets, r, res["baselines"], name)
            json_out.write_text(json.dumps(results, indent=1))
            for space, opt, budget, full, target_only, even in configs:
                for seed in seeds:
                    label = config_label(space, opt, budget, full, target_only, args.samples, even)
                    console.print(f"{format_length(target)} ({scale}×): {label}, seed {seed} …")
                    run, minutes = run_search(
                        args.model,
                        target,
                        space,
                        opt,
                        budget,
                        full,
                        target_only,
                        args.samples,
                        seed,
                        args.workers,
                        runs,
                        even=even,
                        window=g.original_length,
                    )
                    traj, tf, n_evals = trajectory(run)
                    entry = res["searches"].setdefault(f"{label}#s{seed}", {})
                    entry.update(
                        {
                            "space": space,
                            "optimizer": opt,
                            "budget": budget,
                            "racing": not full,
                            "seed": seed,
                            "token_forwards": tf,
                            "evaluations": n_evals,
                            "minutes": minutes,
                            "evals_worth": tf / (args.samples * target),
                            "run": str(run),
                            "command": "python bench/search_quality.py " + " ".join(sys.argv[1:]),
                        }
                    )
                    cache = entry.setdefault("heldout", {})
                    points = []
                    for frac in (0.25, 0.5):  # the best by search score after a quarter and half of the spend
                        upto = [t for t in traj if t["token_forwards"] <= frac * tf + 1e-9] or traj[:1]
                        rec = upto[-1]["best"]
                        h = held(sets, Rescale(np.asarray(rec.lam), rec.m), cache, f"c{rec.id}")
                        points.append(
                            {
                                "fraction": frac,
                                "token_forwards": upto[-1]["token_forwards"],
                                "id": rec.id,
                                "search_nll": rec.score,
                                **{k: v for k, v in h.items()},
                            }
                        )
                    # at the end: the factors the run chose (best.json: by validation where the run has it)
                    chosen = load_factors(run)
                    cid = int(chosen.provenance["candidate"])
                    rec = next(t["best"] for t in traj if t["best"].id == cid) if any(t["best"].id == cid for t in traj) else None
                    final_r = Rescale(chosen.long_factor, chosen.attention_factor)
                    h = held(sets, final_r, cache, f"c{cid}")
                    points.append(
                        {
                            "fraction": 1.0,
                            "token_forwards": tf,
                            "id": cid,
                            "search_nll": float(chosen.provenance["score"]),
                            **{k: v for k, v in h.items()},
                        }
                    )
                    entry["curve"] = points
                    # the same long factors inside the window, as vLLM and llama.cpp serve them above it
                    entry["window"] = held(window_sets, final_r, entry.setdefault("window_cache", {}), f"c{cid}")
                    # and at every doubling of the window below the target (the served lengths vLLM and llama.cpp
                    # give the long factors to): accuracy per length, the window first, the target last
                    per = entry.setdefault("per_length", {})
                    for n in default_lengths(g.original_length, target):
                        if n == g.original_length:
                            per[str(n)] = entry["window"]
                        elif n == target:
                            per[str(n)] = dict(h)
                        else:
                            mid = heldout_sets(lm.tokenizer, n, args.heldout_samples, runs / "heldout")
                            per[str(n)] = held(mid, final_r, entry.setdefault("length_cache", {}), f"c{cid}@{n}")
                    entry["chosen_by"] = chosen.provenance.get("chosen_by", "search score")
                    journal = RunStore(run).read_journal()
                    crec = journal.candidates().get(cid)
                    vrec = [v for v in journal.validations().values() if v.id == cid]
                    entry["search_accuracy"] = None if crec is None else crec.accuracy
                    entry["validation_accuracy"] = vrec[0].accuracy if vrec else None
                    entry["best"] = {
                        "id": cid,
                        "search_nll": float(chosen.provenance["score"]),
                        "validation_nll": chosen.provenance.get("validation_nll"),
                        "m": chosen.attention_factor,
                        "params": (rec.params if rec is not None else chosen.provenance.get("params")),
                        "lam": chosen.long_factor.tolist(),
                    }
                    json_out.write_text(json.dumps(results, indent=1))
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    report(results, args, g, console)


def report(results: dict, args, g, console) -> None:
    headers = [
        "scale",
        "method",
        "project acc · NLL",
        "foreign acc · NLL",
        "in window, long factors: project · foreign acc",
        "foreign acc 1×, 2×, 4× … target",
        "search · validation acc (gap to foreign)",
        "search NLL",
        "evals",
        "token-forwards",
        "evals' worth",
        "min",
    ]
    rows = []
    for scale, res in sorted(results.items(), key=lambda kv: int(kv[0])):
        target = g.original_length * int(scale)
        for name, h in res["baselines"].items():
            w = res.get("window_baselines", {}).get(name)
            rows.append(
                [
                    f"{scale}× ({format_length(target)})",
                    name,
                    _cell(h["project"]),
                    _cell(h["foreign"]),
                    _window(w),
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                ]
            )
        for label, e in res["searches"].items():
            if "curve" not in e:
                continue
            last = e["curve"][-1]
            rows.append(
                [
                    f"{scale}× ({format_length(target)})",
                    label,
                    _cell(last["project"]),
                    _cell(last["foreign"]),
                    _window(e.get("window")),
                    _per_length(e.get("per_length")),
                    _gap(e, last),
                    f"{e['best']['search_nll']:.3f}",
                    str(e["evaluations"]),
                    f"{e['token_forwards'] / 1e6:.1f} M",
                    f"{e['evals_worth']:.0f}",
                    f"{e['minutes']:.1f}",
                ]
            )
    emit_table(
        console,
        f"search quality per cost: {args.model or 'testbed'}",
        headers,
        rows,
        [
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, {args.workers} workers; model {args.model or 'testbed'} "
            f"(window {g.original_length}, rotary dim {g.rotary_dim}, base {g.base:g}); searches score N needle documents per "
            f"evaluation (/nN in the label; pass key, uniform depths); #sK is the seed; held-out: {args.heldout_samples} "
            f"documents per set. The table gathers every run kept in {json_out_name(args)}; the commands that measured "
            "its search rows are listed below it."
        ],
        [
            "Configurations ending /target search as before served lengths (pass key only, uniform depths, scored at the "
            "target alone, best.json = lowest search NLL); the others run evolve's defaults (every template solved in the "
            "window, spread depths, served lengths with the long factors at each, a validation mix choosing best.json, "
            "patience 3); /even weights the served lengths equally (evolve's default: half on the target, half spread "
            "evenly below). In-window column: the chosen long factors applied at the window length (256) on 40-document "
            "sets of both kinds, as vLLM and llama.cpp serve them above the window (plain RoPE: the `none` row of 1×). "
            "acc · NLL: exact-answer accuracy and answer-token NLL of the chosen factors on the held-out sets (project: pass key, "
            "another seed, uniform depths; foreign: another pass-key framing, Python stdlib docstrings, depths 10/30/50 %; "
            "plain RoPE: the `none` row of 1×). "
            "evals: evaluations journaled; token-forwards: documents run × tokens (candidates only); evals' worth = "
            "token-forwards / (documents per evaluation × length).",
            *_over_seeds(results, g.original_length),
            "",
            "Search rows measured by:",
            "",
            *[f"- `{c}`" for c in _commands(results)],
        ],
        args.out,
        left=("method",),
    )
    plot(results, Path(args.out).with_suffix(".png"))


def _over_seeds(results: dict, window: int) -> list[str]:
    """Mean and spread (half the range) over seeds, per scale and configuration run with more than one seed: foreign
    accuracy at the target and in the window with the long factors, and the search − foreign gap."""
    lines: list[str] = []
    for scale, res in sorted(results.items(), key=lambda kv: int(kv[0])):
        groups: dict[str, list[dict]] = {}
        for label, e in res["searches"].items():
            if "curve" in e:
                groups.setdefault(label.rsplit("#s", 1)[0], []).append(e)
        for config, es in groups.items():
            if len(es) < 2:
                continue

            def ms(xs: list[float]) -> str:
                return f"{np.mean(xs):.2f} ± {(max(xs) - min(xs)) / 2:.2f}"

            target = [e["curve"][-1]["foreign"]["accuracy"] for e in es]
            inwin = [e["window"]["foreign"]["accuracy"] for e in es if e.get("window")]
            gaps = [e["search_accuracy"] - e["curve"][-1]["foreign"]["accuracy"] for e in es if e.get("search_accuracy") is not None]
            seeds = ", ".join(str(e["seed"]) for e in es)
            parts = [f"foreign at the target {ms(target)}"]
            if len(inwin) == len(es):
                parts.append(f"in the window ({window}) with the long factors {ms(inwin)}")
            if len(gaps) == len(es):
                parts.append(f"search − foreign gap {ms(gaps)}")
            lines.append(f"- {scale}× {config}, seeds {seeds} (mean ± half the range): " + "; ".join(parts))
    return ["", "Over seeds:", "", *lines] if lines else []


def json_out_name(args) -> str:
    return Path(args.out).with_suffix(".json").name


def _commands(results: dict) -> list[str]:
    seen: list[str] = []
    for res in results.values():
        for e in res["searches"].values():
            c = e.get("command")
            if c and c not in seen:
                seen.append(c)
    return seen


def _cell(h: dict) -> str:
    return f"{h['accuracy']:.2f} · {h['nll']:.2f}"


def _gap(e: dict, last: dict) -> str:
    """The chosen factors' accuracy on the search's own documents and on the validation needles, and search minus
    foreign (the overfitting gap)."""
    sa, va = e.get("search_accuracy"), e.get("validation_accuracy")
    if sa is None:
        return "-"
    v = "–" if va is None else f"{va:.2f}"
    return f"{sa:.2f} · {v} ({sa - last['foreign']['accuracy']:+.2f})"


def _per_length(per: dict | None) -> str:
    """Foreign-set accuracy of the long factors at the window, its doublings and the target."""
    if not per:
        return "-"
    return " / ".join(f"{per[k]['foreign']['accuracy']:.2f}" for k in sorted(per, key=int))


def _window(h: dict | None) -> str:
    """Accuracy of the long factors on the in-window sets (vLLM / llama.cpp serving above the window); '-' where the
    run predates the measurement."""
    return "-" if not h else f"{h['project']['accuracy']:.2f} · {h['foreign']['accuracy']:.2f}"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def searched(scale: str) -> list[tuple[str, dict]]:
        return [(label.replace("#s0", ""), e) for label, e in results[scale]["searches"].items() if "curve" in e]

    scales = [s for s in sorted(results, key=int) if searched(s)]  # a scale with baselines only has nothing to draw
    if not scales:
        return
    labels = sorted({label for s in scales for label, _ in searched(s)})
    palette = plt.get_cmap("tab20")
    color = {label: palette(i % 20) for i, label in enumerate(labels)}  # one colour per configuration in every panel
    fig, axes = plt.subplots(1, len(scales), figsize=(6.0 * len(scales), 5.4), squeeze=False)
    for ax, scale in zip(axes[0], scales, strict=True):
        res = results[scale]
        for label, e in searched(scale):
            xs = [p["token_forwards"] / 1e6 for p in e["curve"]]
            ys = [p["project"]["accuracy"] for p in e["curve"]]
            ax.plot(xs, ys, marker="o", label=label, color=color[label])
        for name, h in res["baselines"].items():
            if name in ("yarn",) or name.startswith("hand"):
                ax.axhline(h["project"]["accuracy"], linestyle="--", linewidth=0.8, color="gray")
                ax.text(0, h["project"]["accuracy"], " " + name, fontsize=7, va="bottom", color="gray")
        ax.set_title(f"{scale}× the window")
        ax.set_xlabel("token-forwards spent (millions)")
        ax.set_ylabel("held-out accuracy (project set)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
