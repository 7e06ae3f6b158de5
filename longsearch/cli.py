"""The ``longsearch`` command line: one short function per command; library code never prints.

Errors a user can cause (:class:`LongsearchError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, cast

import typer
from rich.console import Console

from .errors import LongsearchError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Search per-dimension RoPE rescale factors to extend a model's context window, and export them.",
)
needles_app = typer.Typer(no_args_is_help=True, help="Build and inspect needle sets.")
testbed_app = typer.Typer(no_args_is_help=True, help="The embedded testbed model.")
app.add_typer(needles_app, name="needles")
app.add_typer(testbed_app, name="testbed")

console = Console()
err_console = Console(stderr=True)

ATTN_HELP = (
    "Attention implementation: auto (default: longsearch_windowed for models with sliding-window layers, whose "
    "memory stays linear in length, sdpa otherwise), sdpa, eager, longsearch_windowed, or another transformers name "
    "(flash_attention_2)."
)
ATTN_HELP = (
    "Attention implementation: auto (default: longsearch_windowed for models with sliding-window layers, whose "
    "memory stays linear in length; sdpa otherwise), sdpa, eager, longsearch_windowed, or another transformers name "
    "(flash_attention_2)."
)
MODEL_HELP = (
    "Hub id or local directory of a transformers model, or a llama.cpp .gguf file (loaded by transformers, dequantized) "
    "(default: the embedded testbed model)."
)


# ---------------------------------------------------------------- info


@app.command()
def info(
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    target: str = typer.Option(..., "--target", "-t", help="Target context length, e.g. 32k, 128k, 1m."),
) -> None:
    """Show a model's RoPE geometry and what PI, NTK, YaRN and Llama-3 do to each frequency."""
    from .info import model_info
    from .render import render_info

    render_info(console, model_info(model, target))


# ---------------------------------------------------------------- needles (needles.py)


@needles_app.command("build")
def needles_build(
    length: str = typer.Option(..., "--length", "-l", help="Tokens per document, e.g. 4k, 128k."),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP + " Its tokenizer is used."),
    samples: int = typer.Option(8, "--samples", "-n", help="Number of documents."),
    template: str = typer.Option("magic-number", "--template", help="passkey, magic-number or multi-needle."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same bytes."),
    depth: str | None = typer.Option(
        None, "--depth", help="Needle depths in [0,1], e.g. 0,0.5,1, or 'uniform' (default: near the start, as LongRoPE2)."
    ),
    haystack: list[str] | None = typer.Option(
        None, "--haystack", help='Prose: a .txt or .jsonl ("text" field) file, repeatable; or heldout, train, all (default heldout).'
    ),
    out: str | None = typer.Option(None, "--out", "-o", help="Output directory (default needle_data/built/<name>)."),
    force: bool = typer.Option(False, "--force", help="Replace the needle set in an existing non-empty --out."),
) -> None:
    """Build a needle set: documents of exactly --length tokens with the model's tokenizer, and a manifest."""
    from pathlib import Path

    from .errors import NeedleError
    from .lengths import format_length, parse_length
    from .needles import build_needle_set, default_set_name, tokenizer_and_name

    n = parse_length(length)
    tok, tok_name = tokenizer_and_name(model)
    hay = (haystack[0] if len(haystack) == 1 else haystack) if haystack else "heldout"
    target = Path(out) if out else Path("needle_data") / "built" / default_set_name(template, n, seed, tok_name)
    if target.exists() and not target.is_dir():
        raise NeedleError(f"{target} exists and is not a directory: choose another --out")
    if target.is_dir() and any(target.iterdir()) and not force:  # --force replaces the set's files in it
        raise NeedleError(
            f"{target} already exists and is not empty: choose another --out, or pass --force to replace the needle set in it"
        )
    with console.status(f"building {samples} × {format_length(n)} {template} documents"):
        ns = build_needle_set(tok, n, samples, template=template, seed=seed, depths=depth, haystack=hay, tokenizer_name=tok_name)
        ns.save(target)
    console.print(f"wrote {target} ({len(ns.samples)} × {n:,} tokens, template {ns.template}, tokenizer {tok_name}, vocab {ns.vocab_hash})")


@needles_app.command("show")
def needles_show(
    needle_set: str = typer.Argument(..., metavar="SET", help="A needle-set directory (from needles build)."),
    sample: int = typer.Option(0, "--sample", "-s", help="Which sample to show."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Model whose tokenizer decodes the set (default: the one it was built with)."
    ),
    full: bool = typer.Option(False, "--full", help="Print the whole document instead of the parts around the needles."),
) -> None:
    """Print a needle set's manifest and one sample with the needle, question and answer marked."""
    from .needles import load_needle_set, tokenizer_and_name
    from .render import render_needle_set

    ns = load_needle_set(needle_set)
    tok, _ = tokenizer_and_name(model if model is not None else ns.tokenizer_name)
    ns.check(tokenizer=tok)
    render_needle_set(console, ns, tok, sample, full)


# ---------------------------------------------------------------- testbed (tiny/)


@testbed_app.command("train")
def testbed_train(
    out: str = typer.Option(..., "--out", "-o", help="Directory to write the trained model into (must not exist or be empty)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the run (the shipped model: 0)."),
    steps: int | None = typer.Option(None, "--steps", help="Training steps (default: the recipe's)."),
    quick: bool = typer.Option(False, "--quick", help="A reduced model and a few steps: a smoke test in seconds."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model directory at --out."),
) -> None:
    """Train the testbed model from scratch on this CPU (about 30 minutes with the defaults)."""
    import dataclasses

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .errors import InputError
    from .tiny.train import TrainConfig, train

    cfg = TrainConfig.quick(seed) if quick else TrainConfig(seed=seed)
    if steps is not None:
        if steps < 1:
            raise InputError(f"--steps must be at least 1, got {steps}")
        cfg = dataclasses.replace(cfg, steps=steps, curriculum_steps=min(cfg.curriculum_steps, steps))
    columns = (
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("train", total=cfg.steps, status="")

        def on_step(step: int, total: int, info: dict) -> None:
            acc = info.get("heldout_accuracy")
            status = f"loss {info['loss']:.3f}" + (f"  needle acc {acc:.2f}" if acc is not None else "")
            bar.update(task, completed=step, status=status)

        result = train(cfg, out, progress=on_step, overwrite=overwrite)
    console.print(f"wrote {result.out_dir} ({result.n_params:,} parameters, {result.seconds / 60:.1f} min); loss curve {result.curve_png}")


@testbed_app.command("card")
def testbed_card(
    model: str | None = typer.Option(None, "--model", "-m", help="Local model directory (default: the shipped testbed)."),
    samples: int = typer.Option(40, "--samples", "-n", help="Needle samples per length."),
    seed: int = typer.Option(1234, "--seed", help="Needle-set seed (never used in training)."),
    template: str = typer.Option("passkey", "--template", help="Needle template of the project's needle sets."),
    write: bool = typer.Option(True, "--write/--no-write", help="Write MODEL_CARD.md and card_table.json beside the weights."),
) -> None:
    """Measure NLL and needle accuracy of plain RoPE, PI, NTK and YaRN at 1×–16× the window; update the card."""
    from rich.markdown import Markdown
    from rich.progress import Progress

    from .tiny.card import card_paths, measure_card, render_table, write_card

    card_file, model_dir = card_paths(model)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("scoring", total=20)
        table = measure_card(
            model,
            n_samples=samples,
            seed=seed,
            template=template,
            progress=lambda done, total, what: bar.update(task, completed=done, total=total, description=what),
        )
    console.print(Markdown(render_table(table)))
    if write:
        console.print(f"wrote {write_card(card_file, model_dir, table)}")


@testbed_app.command("gguf")
def testbed_gguf_command(
    out: str = typer.Option(..., "--out", "-o", help="The .gguf file to write."),
    arch: str = typer.Option("llama", "--arch", help="llama.cpp architecture: llama, or phi3 (the same network, fused projections)."),
    model: str | None = typer.Option(None, "--model", "-m", help="A small Llama model directory (default: the shipped testbed)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
) -> None:
    """Write the testbed as a float32 llama.cpp GGUF file (byte vocabulary), to check exports in llama.cpp itself."""
    from .tiny.gguf import testbed_gguf

    path = testbed_gguf(out, model=model, arch=arch, force=force)
    console.print(
        f"wrote {path} ({arch}, {path.stat().st_size / 1e6:.1f} MB); export factors into it with "
        f"`longsearch export RUN --format gguf --gguf {path} --out OUT.gguf`",
        highlight=False,
    )


# ---------------------------------------------------------------- evolve (evolve.py)


@app.command()
def evolve(
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    target: str | None = typer.Option(None, "--target", "-t", help="Target context length, e.g. 4k, 128k."),
    space: str | None = typer.Option(None, "--space", help="Search space: hybrid (default), yarn, longrope2, longrope, or a YAML file."),
    budget: str | None = typer.Option(
        None,
        "--budget",
        "-b",
        help="quick (default), paper (40 generations), a number of generations, or Nevals (e.g. 500evals: N full evaluations' worth of scoring).",
    ),
    workers: int | None = typer.Option(None, "--workers", "-w", help="Ray workers (default: one per GPU, else 1)."),
    address: str | None = typer.Option(
        None,
        "--address",
        help="Ray cluster to run the workers on (HOST:PORT of its head, or ray://HOST:PORT); default: a local Ray. "
        "A cluster on this machine (`ray start --head`) is joined with its token (~/.ray/auth_token); for "
        "another machine's, set RAY_AUTH_MODE=token with that cluster's token in ~/.ray/auth_token, "
        "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH.",
    ),
    optimizer: str | None = typer.Option(None, "--optimizer", help="ga (default), random, nevergrad:NAME or optuna:NAME."),
    samples: int | None = typer.Option(
        None,
        "--samples",
        "-n",
        help="Needle documents per evaluation at the target (default 16; half as many, at least 2, at each shorter served length).",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the search and its needle set (default 0)."),
    out: str | None = typer.Option(None, "--out", "-o", help="Run directory (default outputs/<model>-<target>-<space>-s<seed>)."),
    resume: str | None = typer.Option(None, "--resume", help="Continue the run in this directory."),
    force: bool = typer.Option(False, "--force", help="Start over in an existing run directory (deletes it; not with --resume)."),
    gpus_per_worker: float = typer.Option(
        1.0,
        "--gpus-per-worker",
        help="GPUs per worker: 0 for CPU workers, a fraction below 1 to share a GPU, N for models too large for one.",
    ),
    task_timeout: float | None = typer.Option(None, "--task-timeout", help="Seconds (> 0) before a silent worker is replaced."),
    device: str = typer.Option(
        "auto",
        "--device",
        help="Where the workers score: auto (default: GPUs where the Ray cluster has them, waiting for busy ones; CPU "
        "workers only on a cluster with no GPU), cuda, or cpu.",
    ),
    attn_implementation: str | None = typer.Option(None, "--attn-implementation", help=ATTN_HELP + " With --resume: the run's."),
    worker_startup_timeout: float | None = typer.Option(
        None,
        "--worker-startup-timeout",
        help="Seconds (> 0) a worker may take to be placed and to load the model (default 600; with --resume: the run's).",
    ),
    template: str | None = typer.Option(
        None,
        "--template",
        help="Needle template(s) of the search: auto (default: every template the model solves inside its window), passkey, magic-number, multi-needle, or a comma list; or one RULER-style task (e.g. niah-multikey-2; not cwe), checked in the window the same way.",
    ),
    depths: str | None = typer.Option(
        None,
        "--depths",
        help="Needle depths: spread (default, one per slice of the document), uniform, start (LongRoPE2's: near the start), or a list such as 0.1,0.5.",
    ),
    signal_check: bool | None = typer.Option(
        None,
        "--signal-check/--no-signal-check",
        help="Refuse templates the model does not solve inside its window (default on; with --resume, the run's).",
    ),
    accept_model_change: bool = typer.Option(
        False,
        "--accept-model-change",
        help="With --resume: continue although the model's config, weights or tokenizer changed since the run started (its journal then mixes two models).",
    ),
    racing: bool | None = typer.Option(
        None,
        "--racing/--no-racing",
        help="Stop scoring a candidate once it cannot beat the optimizer's bar (default on; same decisions, fewer token-forwards).",
    ),
    serve_lengths: str | None = typer.Option(
        None,
        "--serve-lengths",
        help="Lengths a candidate is scored at, long factors at each (as vLLM and llama.cpp serve them): auto (default: the window, its doublings, the target), target (the target alone), or a list ending at the target (256,1k,2k).",
    ),
    serve_weights: str | None = typer.Option(
        None,
        "--serve-weights",
        help="Weight of each served length in the score: auto (default: half on the target, half spread below) or one number per length.",
    ),
    validation_samples: int | None = typer.Option(
        None,
        "--validation-samples",
        help="Documents per validation set (another haystack and framing, never seen by the optimizer; it chooses the final factors). Default 16; 0: none.",
    ),
    patience: int | None = typer.Option(
        None, "--patience", help="Stop after this many generations without a better validation score (default 3; 0: never early)."
    ),
) -> None:
    """Search per-dimension RoPE factors (LongRoPE2) with an evolutionary search on Ray workers; resumable."""
    from pathlib import Path

    from .evolve import EvolveOptions, run_evolve
    from .lengths import parse_length
    from .render import RichReporter

    opts = EvolveOptions(
        model=model,
        target=parse_length(target) if target else None,
        space=space,
        budget=budget,
        optimizer=optimizer,
        samples=samples,
        seed=seed,
        workers=workers,
        address=address,
        out=Path(out) if out else None,
        resume=Path(resume) if resume else None,
        force=force,
        gpus_per_worker=gpus_per_worker,
        task_timeout=task_timeout,
        device=device,
        attn_implementation=attn_implementation,
        worker_startup_timeout=worker_startup_timeout,
        racing=racing,
        template=template,
        depths=depths,
        signal_check=signal_check,
        accept_model_change=accept_model_change,
        serve_lengths=serve_lengths,
        serve_weights=serve_weights,
        validation_samples=validation_samples,
        patience=patience,
    )
    import signal

    def stop(signum: int, frame: object) -> None:  # SIGTERM (a scheduler, `kill`) stops cleanly, like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with RichReporter(console) as reporter:
            run_evolve(opts, reporter)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------- finetune (finetune.py)


@app.command()
def finetune(
    factors: str | None = typer.Option(None, "--factors", help="The searched factors: RUN/best.json (or any factors .json)."),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    out: str | None = typer.Option(None, "--out", "-o", help="Run directory; the trained model is written to OUT/model."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (default 200)."),
    long_length: str | None = typer.Option(None, "--long-length", help="Tokens per long row, e.g. 128k (default: the factors' target)."),
    short_length: str | None = typer.Option(
        None, "--short-length", help="Tokens per short row, at most the original window (default: the window)."
    ),
    short_ratio: float | None = typer.Option(
        None,
        "--short-ratio",
        help="Share of micro-batches that are short (original RoPE), the rest long (long factors); 0 = long-only (default 0.5).",
    ),
    needle_share: float | None = typer.Option(
        None, "--needle-share", help="Share of rows that are needle documents, the rest prose (default 0.5)."
    ),
    template: str | None = typer.Option(None, "--template", help="Needle template(s) of the needle rows (default passkey)."),
    answer_weight: float | None = typer.Option(None, "--answer-weight", help="Loss weight of a needle's answer tokens (default 1)."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate, cosine schedule (default 2e-5)."),
    warmup_steps: int | None = typer.Option(None, "--warmup-steps", help="Warm-up steps (default 5 % of --steps)."),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help="AdamW weight decay (default 0)."),
    grad_accum: int | None = typer.Option(None, "--grad-accum", help="Micro-batches per optimizer step (default 1)."),
    save_every: int | None = typer.Option(None, "--save-every", help="Steps between checkpoints (default 50)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the data and the training (default 0)."),
    device: str | None = typer.Option(None, "--device", help="auto (default), cpu or cuda."),
    bf16: bool | None = typer.Option(None, "--bf16/--no-bf16", help="bf16 mixed precision (default: on where the GPU supports it)."),
    gradient_checkpointing: bool | None = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations to save memory (default off)."
    ),
    deepspeed: str | None = typer.Option(None, "--deepspeed", help="A DeepSpeed JSON configuration, passed to transformers' Trainer."),
    fsdp: str | None = typer.Option(None, "--fsdp", help="Trainer's FSDP setting, e.g. 'full_shard auto_wrap'."),
    fsdp_config: str | None = typer.Option(None, "--fsdp-config", help="An FSDP JSON configuration, passed to transformers' Trainer."),
    attn_implementation: str | None = typer.Option(None, "--attn-implementation", help=ATTN_HELP),
    keep_checkpoints: bool | None = typer.Option(
        None, "--keep-checkpoints/--no-keep-checkpoints", help="Keep OUT/checkpoints once the model is written (default: removed)."
    ),
    resume: str | None = typer.Option(None, "--resume", help="Continue the run in this directory from its last complete checkpoint."),
    force: bool = typer.Option(False, "--force", help="Start over in an existing run directory (deletes it)."),
    accept_model_change: bool = typer.Option(
        False, "--accept-model-change", help="With --resume: continue although the model changed since the run started."
    ),
) -> None:
    """Mixed context window training (LongRoPE2) with the searched factors; resumable; writes a transformers model."""
    from .finetune import FinetuneOptions, run_finetune
    from .lengths import parse_length

    opts = FinetuneOptions(
        factors=factors,
        model=model,
        out=out,
        steps=steps,
        long_length=parse_length(long_length) if long_length else None,
        short_length=parse_length(short_length) if short_length else None,
        short_ratio=short_ratio,
        needle_share=needle_share,
        template=template,
        answer_weight=answer_weight,
        learning_rate=lr,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        grad_accum=grad_accum,
        save_every=save_every,
        seed=seed,
        device=device,
        bf16=bf16,
        gradient_checkpointing=gradient_checkpointing,
        deepspeed=deepspeed,
        fsdp=fsdp,
        fsdp_config=fsdp_config,
        keep_checkpoints=keep_checkpoints,
        attn_implementation=attn_implementation,
    )
    result = run_finetune(opts, resume=resume, force=force, accept_model_change=accept_model_change)
    if not result.main_process:  # another process of a multi-process launch: the first one reports
        return
    how = f" (resumed from step {result.resumed_from})" if result.resumed_from is not None else ""
    console.print(f"[bold green]trained[/] {result.steps} steps in {result.seconds:.1f} s{how}", highlight=False)
    console.print(f"  model    {result.model_dir}", highlight=False)
    console.print(f"  state    {result.out / 'finetune.json'}", highlight=False)
    if (result.out / "loss.png").exists():
        console.print(f"  losses   {result.out / 'loss.png'}", highlight=False)
    console.print(
        f"  export   longsearch export {result.model_dir / 'longsearch_factors.json'} --format hf --model-dir {result.model_dir} --out DIR",
        highlight=False,
        soft_wrap=True,
    )


# ---------------------------------------------------------------- export / eval (export.py, evaluate.py)


@app.command("export")
def export_command(
    source: str = typer.Argument(..., help="A run directory, a factors .json or a LongRoPE .csv."),
    fmt: str = typer.Option(..., "--format", "-f", help="hf, vllm, gguf, longrope-csv or json."),
    model_dir: str | None = typer.Option(None, "--model-dir", help="Model directory to copy with its config patched (hf, vllm)."),
    gguf_file: str | None = typer.Option(
        None, "--gguf", help="The llama.cpp .gguf file to copy with the factors (gguf; default: --model when it is a .gguf file)."
    ),
    out: str | None = typer.Option(
        None, "--out", "-o", help="Output path (default: inside the run directory or next to the factors file)."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help=MODEL_HELP + " Used when there is no --model-dir; from a .gguf file, hf and vllm write a whole model directory "
        "(float32 safetensors, config, tokenizer).",
    ),
    target: str | None = typer.Option(None, "--target", "-t", help="Target length; needed for a .csv source."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
    link: bool = typer.Option(
        False,
        "--link",
        help="Hard-link the weight files (.safetensors, .bin, .pt, .pth, .gguf, …) and every other file of 1 MiB or "
        "more instead of copying them (the default copies, as a reflink where the file system offers one). Saves "
        "disk, but the export then shares those files with the original model: anything that later writes into a "
        "linked file in place rewrites the original too.",
    ),
) -> None:
    """Export searched factors to transformers, vLLM, llama.cpp (GGUF), LongRoPE CSV or JSON."""
    from .export import export
    from .lengths import parse_length

    result = export(
        source,
        fmt,
        out,
        model=model,
        model_dir=model_dir,
        gguf_file=gguf_file,
        target_length=parse_length(target) if target else None,
        force=force,
        link=link,
    )
    console.print(f"[bold green]exported[/] ({result.format}) → {result.out}", highlight=False)
    for path in result.paths[:8]:
        console.print(f"  {path}", highlight=False)
    if len(result.paths) > 8:
        console.print(f"  … and {len(result.paths) - 8} more", highlight=False)
    for note in result.notes:
        console.print(f"[dim]note:[/] {note}", highlight=False, soft_wrap=True)
    for warning in result.warnings:
        err_console.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if result.serve_command:
        console.print("vLLM (without editing the model's files):", highlight=False)
        console.print(result.serve_command, highlight=False, soft_wrap=True, markup=False)


@app.command("eval")
def eval_command(
    more_factors: list[str] | None = typer.Argument(None, help="Factors files (also after --factors: --factors A.json B.json)."),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    factors: list[str] | None = typer.Option(None, "--factors", help="Factors .json, run directory or .csv (repeatable)."),
    baselines: str | None = typer.Option(
        None,
        "--baselines",
        "-b",
        help="Comma-separated: pi,ntk,yarn,dynamic-ntk,llama3 (RoPE rescaling) and lambda-window, rerope, leaky-rerope, "
        "self-extend, nbce (attention-side), parameters as name:key=value, e.g. self-extend:group_size=8:window_size=64.",
    ),
    cost: bool = typer.Option(True, "--cost/--no-cost", help="Time and peak memory of one document per method and length (default on)."),
    lengths: str | None = typer.Option(
        None,
        "--lengths",
        "-l",
        help="Comma-separated lengths, e.g. 256,1k,4k (default: the model's window, its doublings and the target).",
    ),
    target: str | None = typer.Option(
        None,
        "--target",
        "-t",
        help="Target length of the baselines (and of .csv factors); default: the largest length, else the factors' target.",
    ),
    serving: str = typer.Option(
        "per-forward,long-everywhere",
        "--serving",
        help="How factors are applied: per-forward (transformers: each forward by its length), long-everywhere (vLLM, "
        "llama.cpp: the long factors at every length once the served context exceeds the window), or both (default).",
    ),
    depths: str | None = typer.Option(None, "--depths", help="Needle depths: a count (5) or fractions such as 0.1,0.5,0.9."),
    samples: int = typer.Option(4, "--samples", help="Needle documents per depth × length cell."),
    seed: int = typer.Option(777, "--seed", help="Seed of the held-out needle sets (keep it apart from search seeds)."),
    template: str = typer.Option(
        "auto",
        "--template",
        help="Needle template: auto (those the model solves in its window, as evolve checks), passkey, magic-number, multi-needle.",
    ),
    segment: int | None = typer.Option(
        None, "--segment", help="Tokens of the fixed final segment scored at every length (default: a quarter of the window, at most 256)."
    ),
    out: str | None = typer.Option(None, "--out", "-o", help="Output directory (default: outputs/eval-<time>)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16, float16."),
    attn_implementation: str = typer.Option("auto", "--attn-implementation", help=ATTN_HELP),
    suite: str | None = typer.Option(
        None,
        "--suite",
        help="Also run a task suite at every length for every method: ruler (every RULER-style task longsearch builds; see docs/ruler.md).",
    ),
    tasks: str | None = typer.Option(
        None, "--tasks", help="Also run these RULER-style tasks, comma-separated, e.g. niah-single-1,vt,cwe (with or without --suite)."
    ),
    task_samples: int = typer.Option(8, "--task-samples", help="Documents per task × length (with --suite / --tasks)."),
    attention_memory: str = typer.Option(
        "2GiB",
        "--attention-memory",
        help="Memory the attention-side baselines' score maps may take per block of queries (e.g. 512MiB, 2GiB): the "
        "block size follows from it; their sequence-wide tensors (6 × heads × head dim × 4 bytes per token and layer) come on top.",
    ),
) -> None:
    """Needle NLL / accuracy (depth × length) and final-segment perplexity for each method and length."""
    import shlex
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from . import evaluate as ev
    from .atomic import destination_exists
    from .errors import InputError, RunError
    from .lengths import parse_length, parse_lengths
    from .models import load_config, load_model, model_geometry

    asked = parse_lengths(lengths) if lengths else None
    names, depth_list, modes = ev.parse_baselines(baselines), ev.parse_depths(depths), ev.parse_serving(serving)
    ev.validate_settings(samples, segment, template)
    from .ruler.suite import run_tasks, suite_task_names

    task_list = suite_task_names(suite, tasks)
    if task_list and task_samples < 1:
        raise InputError(f"--task-samples must be at least 1, got {task_samples}")
    out_dir = Path(out) if out else ev.default_out_dir()
    if not force and destination_exists(out_dir):
        raise RunError(f"{out_dir} already exists: choose another --out or pass --force to replace it")
    from .windowed_attention import resolve_attn_implementation

    config = load_config(model)  # check every input before loading weights
    geometry = model_geometry(config)
    attn_implementation = resolve_attn_implementation(attn_implementation, config)
    from .attention import parse_memory

    files = [*(factors or []), *(more_factors or [])]
    ns, tgt = ev.resolve_lengths(asked, geometry, parse_length(target) if target else None, files)
    methods = ev.build_methods(geometry, names, files, tgt, parse_memory(attention_memory), serving=modes)
    lm = load_model(model, device=device, dtype=dtype, attn_implementation=attn_implementation)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task("eval", total=None)
        result = ev.run_eval(
            lm,
            methods,
            ns,
            depths=depth_list,
            samples=samples,
            seed=seed,
            template=template,
            segment=segment,
            progress=lambda done, total, what: bar.update(task, completed=done, total=total, description=what),
            command="longsearch " + shlex.join(sys.argv[1:]),
            cost_repeats=3 if cost else 0,
        )
        if task_list:
            ruler = bar.add_task("tasks", total=None)
            result.tasks = run_tasks(
                lm,
                methods,
                task_list,
                ns,
                samples=task_samples,
                seed=seed,
                progress=lambda done, total, what: bar.update(ruler, completed=done, total=total, description=what),
            )
    paths = ev.write_eval(result, out_dir, force=force)
    console.print(_eval_summary(result))
    if result.tasks is not None:
        console.print(_task_summary(result))
    console.print(f"[bold green]wrote[/] {len(paths)} files to {out_dir} (report: {out_dir / 'report.md'})", highlight=False)


def _eval_summary(result):
    """method × length: needle NLL / accuracy / final-segment perplexity."""
    from rich.table import Table

    from .lengths import format_length

    table = Table(title="needle NLL / accuracy / segment ppl", show_lines=False)
    table.add_column("method")
    for n in result.lengths:
        table.add_column(format_length(n), justify="right")
    for label in result.labels:
        cells = []
        for n in result.lengths:
            nll, acc = result.needle_mean(label, n)
            cells.append(f"{nll:.3f}/{acc:.2f}/{result.segment(label, n).ppl:.4g}")
        table.add_row(label, *cells)
    return table


def _task_summary(result):
    """method × length: the RULER-style average (tasks counted where fewer than all fit)."""
    from rich.table import Table

    from .lengths import format_length

    suite = result.tasks
    table = Table(title=f"RULER-style average over {len(suite.tasks)} tasks (k/n: tasks that fit)", show_lines=False)
    table.add_column("method")
    for n in suite.lengths:
        table.add_column(format_length(n), justify="right")
    for label in result.labels:
        cells = []
        for n in suite.lengths:
            avg, k = suite.average(label, n)
            cells.append(("–" if k == 0 else f"{avg:.2f}") + ("" if k == len(suite.tasks) else f" ({k}/{len(suite.tasks)})"))
        table.add_row(label, *cells)
    return table


def main() -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(standalone_mode=False)
    except LongsearchError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click's usage errors (typer ≥ 0.29 vendors click as typer._click)
        import click

        usage_errors: tuple[type, ...] = (click.exceptions.ClickException,)
        try:
            from typer._click.exceptions import ClickException as TyperClickException

            usage_errors += (TyperClickException,)
        except ImportError:
            pass
        if isinstance(e, usage_errors):
            cast(Any, e).show()
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
