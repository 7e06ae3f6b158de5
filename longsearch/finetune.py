"""``longsearch finetune``: LongRoPE2's mixed context window training after the search.

The model is loaded with its config's RoPE set to ``longrope`` with the searched factors, so transformers'
own rotary module applies them — the long factors when a forward's longest position is beyond the original
window, the short factors (the original RoPE; m as transformers applies it) otherwise — and the saved model
is exactly what transformers, vLLM and ``longsearch export`` read. Mixed context window training is then a
matter of the data: each micro-batch is either *long* (one row of ``long_length`` tokens: long factors) or
*short* (``long_length // short_length`` rows of at most the original window: short factors), never padded
together, so that the switch sees each kind on its own. ``short_ratio`` is the share of short micro-batches
(of tokens, as both kinds hold the same number); 0 is long-only training.

Training runs through transformers' :class:`~transformers.Trainer` (so ``--deepspeed`` / ``--fsdp`` are the
ordinary Trainer settings, passed through). Rows are needle documents (the project's templates, haystack from
the training split) and plain prose, each micro-batch drawn from its own seed ``(seed, index)``, read in
order: on CPU a run is deterministic and a resumed run ends with the same weights as an uninterrupted one.
Launched as several processes (``torchrun --nproc_per_node N -m longsearch.cli finetune ...``), process k
reads items k, k + N, k + 2N, ...: N × steps × grad_accum distinct micro-batches, one pass over them (one
process reads exactly the items a single-process run always read). The per-kind losses of all processes are
gathered into the log, and only the first process writes the run directory (the others wait for it). The
process count is part of the run: a resume with another count is refused.

A run directory holds ``finetune.json`` (options, factors, model fingerprint, process count, status, log, and
at the end the training seconds of all invocations), ``checkpoints/`` (Trainer checkpoints; one is complete once its
``longsearch_complete`` marker, which holds the training seconds until then, is written), ``loss.png`` and,
at the end, ``model/``: a transformers model directory whose config carries the factors (long and short),
with the tokenizer and ``longsearch_factors.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import numpy as np

from . import faults
from .atomic import atomic_write_json
from .errors import InputError, LongsearchError, RunError
from .factors import RopeFactors, load_factors
from .plots import finetune_loss_plot

log = logging.getLogger(__name__)

STATE_FILE = "finetune.json"
MODEL_DIR = "model"
CHECKPOINTS = "checkpoints"
COMPLETE_MARKER = "longsearch_complete"
FAULT_POINT = "finetune-checkpoint"  # LONGSEARCH_FAULT=finetune-checkpoint:N:after:kill kills after the N-th checkpoint


@dataclass
class FinetuneOptions:
    """What ``longsearch finetune`` was asked; None = the default (filled in by :func:`resolve_options`)."""

    factors: str | None = None
    model: str | None = None
    out: str | None = None
    steps: int | None = None
    long_length: int | None = None
    short_length: int | None = None
    short_ratio: float | None = None
    needle_share: float | None = None
    template: str | None = None
    answer_weight: float | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    weight_decay: float | None = None
    grad_accum: int | None = None
    save_every: int | None = None
    seed: int | None = None
    device: str | None = None
    bf16: bool | None = None
    gradient_checkpointing: bool | None = None
    deepspeed: str | None = None
    fsdp: str | None = None
    fsdp_config: str | None = None
    keep_checkpoints: bool | None = None
    attn_implementation: str | None = None


DEFAULTS: dict[str, Any] = {
    "steps": 200,
    "short_ratio": 0.5,
    "needle_share": 0.5,
    "template": "passkey",
    "answer_weight": 1.0,
    "learning_rate": 2e-5,
    "weight_decay": 0.0,
    "grad_accum": 1,
    "save_every": 50,
    "seed": 0,
    "device": "auto",
    "gradient_checkpointing": False,
    "keep_checkpoints": False,
    "attn_implementation": "auto",
}


@dataclass
class FinetuneResult:
    out: Path
    model_dir: Path
    steps: int
    seconds: float  # training seconds, over every invocation of a resumed run (until the checkpoint it resumed from)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None
    model: Any = None  # the trained model (in memory, eval mode) when run in-process
    main_process: bool = True  # False in the other processes of a multi-process launch (they write nothing)


# ---------------------------------------------------------------- options


def resolve_options(opts: FinetuneOptions, factors: RopeFactors) -> dict[str, Any]:
    """Every option with its default filled in and checked; a bad one raises InputError naming it."""
    o = {f.name: getattr(opts, f.name) for f in fields(opts)}
    for k, v in DEFAULTS.items():
        if o[k] is None:
            o[k] = v
    window = factors.original_length
    o["long_length"] = int(o["long_length"] or factors.target_length)
    o["short_length"] = int(o["short_length"] or window)
    if o["long_length"] <= window:
        raise InputError(
            f"--long-length {o['long_length']} is inside the original window ({window} tokens), where the short factors "
            "apply: give a length above it (default: the factors' target)"
        )
    if not 16 <= o["short_length"] <= window:
        raise InputError(f"--short-length must be between 16 and the original window ({window} tokens), got {o['short_length']}")
    if o["long_length"] < o["short_length"]:
        raise InputError("--long-length must not be below --short-length")
    if not 0.0 <= float(o["short_ratio"]) <= 1.0:
        raise InputError(f"--short-ratio is a share of micro-batches in [0, 1] (0 = long-only), got {o['short_ratio']}")
    if not 0.0 <= float(o["needle_share"]) <= 1.0:
        raise InputError(f"--needle-share is a share of rows in [0, 1], got {o['needle_share']}")
    if int(o["steps"]) < 1:
        raise InputError(f"--steps must be at least 1, got {o['steps']}")
    if int(o["grad_accum"]) < 1:
        raise InputError(f"--grad-accum must be at least 1, got {o['grad_accum']}")
    if int(o["save_every"]) < 1:
        raise InputError(f"--save-every must be at least 1 step, got {o['save_every']}")
    if not (float(o["learning_rate"]) > 0 and math.isfinite(float(o["learning_rate"]))):
        raise InputError(f"--lr must be a positive number, got {o['learning_rate']}")
    if float(o["answer_weight"]) < 0:
        raise InputError(f"--answer-weight must not be negative, got {o['answer_weight']}")
    if o["warmup_steps"] is None:
        o["warmup_steps"] = max(0, round(0.05 * int(o["steps"])))
    from .needles import get_template, template_names
    from .windowed_attention import resolve_attn_implementation

    resolve_attn_implementation(o["attn_implementation"], None)  # an unknown name is refused before anything runs
    for t in template_names(o["template"]):
        get_template(t)  # an unknown template raises a one-line error naming the known ones
    for key in ("deepspeed", "fsdp_config"):
        path = o[key]
        if path is None:
            continue
        p = Path(path)
        if not p.is_file():
            raise InputError(f"--{key.replace('_', '-')} {path}: no such file (give a JSON configuration file)")
        try:
            json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"--{key.replace('_', '-')} {path} is not valid JSON ({e})") from None
        o[key] = str(p.resolve())
    if o["fsdp_config"] is not None and not o["fsdp"]:
        raise InputError("--fsdp-config needs --fsdp (e.g. --fsdp 'full_shard auto_wrap')")
    return o


# ---------------------------------------------------------------- data


def short_items(n_items: int, ratio: float) -> np.ndarray:
    """Which micro-batches are short: exactly round(n · ratio) of them, spread evenly (Bresenham)."""
    i = np.arange(n_items)
    return np.floor((i + 1) * ratio + 1e-9) > np.floor(i * ratio + 1e-9)


class MixedWindowData:
    """Micro-batch ``i``: a dict of ``input_ids`` [rows, length], ``loss_weight`` [rows, length] and ``long``.

    Long items hold one row of ``long_length`` tokens, short items ``long_length // short_length`` rows of
    ``short_length``. A row is a needle document (share ``needle_share``; templates taken in turn, depth uniform,
    haystack from the training split; its answer tokens weigh ``answer_weight``) or prose from the training
    split. Every item is built from its own generator seeded with ``(seed, i)``: the same index gives the
    same tensors in any order, process or resumed run.
    """

    def __init__(
        self,
        tokenizer: Any,
        n_items: int,
        long_length: int,
        short_length: int,
        short_ratio: float,
        needle_share: float,
        template: str,
        answer_weight: float,
        seed: int,
    ) -> None:
        from .needles import load_haystack_text, template_names

        self.tokenizer = tokenizer
        self.n_items = int(n_items)
        self.long_length = int(long_length)
        self.short_length = int(short_length)
        self.short = short_items(self.n_items, float(short_ratio))
        self.needle_share = float(needle_share)
        self.templates = template_names(template)
        self.answer_weight = float(answer_weight)
        self.seed = int(seed)
        self.prose = load_haystack_text("train")

    def __len__(self) -> int:
        return self.n_items

    def rows_of(self, i: int) -> tuple[int, int]:
        """(rows, tokens per row) of item ``i``."""
        if self.short[i]:
            return max(1, self.long_length // self.short_length), self.short_length
        return 1, self.long_length

    def _prose_row(self, rng: np.random.Generator, length: int) -> np.ndarray:
        chars = 8 * length
        while True:
            start = int(rng.integers(0, max(1, len(self.prose) - chars)))
            ids = self.tokenizer(self.prose[start : start + chars], add_special_tokens=True)["input_ids"]
            if len(ids) >= length or chars >= len(self.prose):
                break
            chars *= 2
        if len(ids) < length:
            raise InputError(f"the training prose holds fewer than {length} tokens for this tokenizer: use a shorter --long-length")
        return np.asarray(ids[:length], dtype=np.int64)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        from .needles import build_needle_set

        if not 0 <= i < self.n_items:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, int(i)])
        n_rows, length = self.rows_of(i)
        ids = np.zeros((n_rows, length), dtype=np.int64)
        weight = np.ones((n_rows, length), dtype=np.float32)
        for r in range(n_rows):
            if rng.random() < self.needle_share:
                template = self.templates[int(rng.integers(len(self.templates)))]
                ns = build_needle_set(
                    self.tokenizer, length, 1, template=template, seed=int(rng.integers(2**31)), depths="uniform", haystack="train"
                )
                s = ns.samples[0]
                ids[r] = s.input_ids
                weight[r, s.answer_start : s.answer_end] = self.answer_weight
            else:
                ids[r] = self._prose_row(rng, length)
        weight[:, 0] = 0.0  # nothing predicts the first token
        return {
            "input_ids": torch.from_numpy(ids),
            "loss_weight": torch.from_numpy(weight),
            "long": torch.tensor(not bool(self.short[i])),
        }


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """One dataset item is one micro-batch already (rows of one length): the loader's batch size is 1."""
    if len(items) != 1:
        raise RuntimeError("mixed-window training loads one micro-batch per step and device")
    return items[0]


# ---------------------------------------------------------------- training


#: fp32 logits computed at once by the loss (one chunk of positions × the vocabulary): 256 MiB is 512 positions of
#: a 128k vocabulary. The full logits of a 128k-token row on a 128k vocabulary would be 64 GiB in fp32.
LOSS_CHUNK_BYTES = 256 << 20


def logit_processor(net: Any) -> Any:
    """What a transformers causal LM does to ``lm_head(hidden)`` before returning logits, as a function of the logits
    (None: nothing): Gemma-style final soft-capping, Cohere's ``logit_scale``, Granite's ``logits_scaling``. The
    chunked loss applies it per chunk; :func:`check_chunked_loss` proves it reproduces the model's own logits."""
    import torch

    config = net.config.get_text_config() if hasattr(net.config, "get_text_config") else net.config
    steps: list[Any] = []
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        steps.append(lambda x, c=float(cap): torch.tanh(x / c) * c)
    scale = getattr(net, "logit_scale", None)
    if isinstance(scale, (int, float)) and scale != 1:
        steps.append(lambda x, k=float(scale): x * k)
    scaling = getattr(config, "logits_scaling", None)
    if isinstance(scaling, (int, float)) and scaling != 1:
        steps.append(lambda x, k=float(scaling): x / k)
    if not steps:
        return None

    def apply(x: Any) -> Any:
        for step in steps:
            x = step(x)
        return x

    return apply


def _chunk_loss(head: Any, process: Any, hidden: Any, targets: Any, weights: Any) -> Any:
    """Σ w·CE over one chunk of positions: [B, c, H] hidden states → [B, c, V] fp32 logits, freed on return."""
    import torch.nn.functional as F

    logits = head(hidden)
    if process is not None:
        logits = process(logits)
    logits = logits.float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return (ce.view_as(weights) * weights).sum()


def _unwrapped(model: Any) -> Any:
    """The transformers model inside the wrappers a launch adds (DDP, DeepSpeed, FSDP keep it as ``.module``)."""
    while not hasattr(model, "get_output_embeddings") and hasattr(model, "module"):
        model = model.module
    return model


def _window_loss(model: Any, inputs: dict[str, Any], chunk_bytes: int = LOSS_CHUNK_BYTES) -> Any:
    """Weighted next-token cross entropy of one micro-batch, Σ w·CE / Σ w over the predicted tokens, without the
    full logits.

    The model runs its own forward (through any wrapper of a launch); a pre-hook on its lm_head takes the final
    hidden states, computes the loss chunk by chunk of positions (each chunk's logits recomputed in the backward
    pass instead of kept: activation checkpointing per chunk) and hands the lm_head an empty slice, so the output's
    logits are empty. At most ``chunk_bytes`` of fp32 logits exist at once instead of length × vocabulary."""
    import torch
    from torch.utils.checkpoint import checkpoint

    ids = inputs["input_ids"]
    w = inputs["loss_weight"][:, 1:].float()
    net = _unwrapped(model)
    head = net.get_output_embeddings()
    process = logit_processor(net)
    vocab = int(head.weight.shape[0]) if isinstance(getattr(head, "weight", None), torch.Tensor) else int(net.config.vocab_size)
    state: dict[str, Any] = {}

    def take_hidden(module: Any, args: tuple[Any, ...]) -> Any:
        if state.get("busy") or "sum" in state:  # our own lm_head calls below, or a second call: left alone
            return None
        hidden = args[0]
        rows, n = hidden.shape[0], hidden.shape[1] - 1
        chunk = max(1, int(chunk_bytes) // max(1, rows * vocab * 4))
        targets, weights = ids[:, 1:].to(hidden.device), w.to(hidden.device)
        total = hidden.new_zeros((), dtype=torch.float32)
        state["busy"] = True
        try:
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                part = (head, process, hidden[:, s:e], targets[:, s:e], weights[:, s:e])
                if torch.is_grad_enabled() and hidden.requires_grad:
                    total = total + checkpoint(_chunk_loss, *part, use_reentrant=False)
                else:
                    total = total + _chunk_loss(*part)
        finally:
            state["busy"] = False
        state["sum"] = total
        return (hidden[:, :0], *args[1:])

    handle = head.register_forward_pre_hook(take_hidden)
    try:
        out = model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    if "sum" not in state:
        raise LongsearchError(
            f"{type(net).__name__}'s forward never called its output embedding (lm_head): finetune cannot compute its loss"
        )
    total = state["sum"]
    return total / w.to(total.device).sum().clamp_min(1e-8), out


def full_logits_loss(model: Any, inputs: dict[str, Any]) -> Any:
    """The same loss from the model's full logits (length × vocabulary): the reference the chunked loss is checked against."""
    import torch.nn.functional as F

    ids = inputs["input_ids"]
    w = inputs["loss_weight"][:, 1:].float()
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none").view_as(w)
    return (ce * w).sum() / w.sum().clamp_min(1e-8)


def check_chunked_loss(model: Any, input_ids: Any) -> None:
    """Refuse a model whose logits the chunked loss does not reproduce (a post-processing of ``lm_head(hidden)`` that
    :func:`logit_processor` does not know): both losses on a short row, in the model's current precision."""
    import torch

    ids = input_ids[:1, :32]
    inputs = {"input_ids": ids, "loss_weight": torch.ones(ids.shape, dtype=torch.float32)}
    with torch.no_grad():
        chunked = float(_window_loss(model, inputs, chunk_bytes=1)[0])
        full = float(full_logits_loss(model, inputs))
    if not math.isclose(chunked, full, rel_tol=1e-4, abs_tol=1e-5):
        raise LongsearchError(
            f"finetune's chunked loss gives {chunked:.6f} where the model's own logits give {full:.6f}: "
            f"{type(_unwrapped(model)).__name__} processes its logits in a way longsearch does not know; report its model type"
        )


def _make_trainer_class() -> type:
    from transformers import Trainer

    class MixedWindowTrainer(Trainer):
        """Trainer whose loss is the weighted cross entropy of one micro-batch, logged per window kind."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.loss_is_scaled_for_ga = False  # our loss is a mean per micro-batch: Trainer divides by accumulation
            self._kind_losses: dict[str, list[float]] = {"short": [], "long": []}

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
            loss, out = _window_loss(model, inputs)
            kind = "long" if bool(inputs["long"]) else "short"
            self._kind_losses[kind].append(float(loss.detach()))
            return (loss, out) if return_outputs else loss

        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            from torch.utils.data import SequentialSampler

            return SequentialSampler(cast(Any, self.train_dataset))  # items are random already; order fixed for exact resume

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:  # Trainer logs the loss on every process: the per-kind losses of all are gathered
                gathered = _gather_lists(self._kind_losses)
                for kind, values in self._kind_losses.items():
                    if gathered[kind]:
                        logs[f"loss_{kind}"] = round(float(np.mean(gathered[kind])), 6)
                    values.clear()
            super().log(logs, start_time)

    return MixedWindowTrainer


def _distributed() -> Any | None:
    """``torch.distributed`` when this process is one of several of a launch (torchrun, accelerate, DeepSpeed), else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def _gather_lists(values: dict[str, list[float]]) -> dict[str, list[float]]:
    """Each key's values from every process, in process order (this process's own when it runs alone)."""
    dist = _distributed()
    if dist is None:
        return values
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, values)
    return {k: [v for part in parts for v in part.get(k, [])] for k in values}


def _wait_for_everyone(args: Any) -> None:
    """A barrier over the launch's processes (nothing when there is one); ``args``: Trainer's TrainingArguments."""
    state = getattr(args, "distributed_state", None)
    if state is not None:
        state.wait_for_everyone()


def checkpoint_seconds(ckpt: Path) -> float | None:
    """Training seconds (all invocations) until checkpoint ``ckpt`` was written, from its completion marker."""
    try:
        return float(json.loads((ckpt / COMPLETE_MARKER).read_text())["seconds"])
    except (OSError, ValueError, TypeError, KeyError):  # absent, or a marker holding the step alone
        return None


def _make_callback(run: Path, seconds: Any) -> Any:
    """``seconds()``: training seconds so far, across resumed invocations."""
    from transformers import TrainerCallback

    class RunCallback(TrainerCallback):
        """Marks each checkpoint complete once every process has written its part; redraws the loss curves."""

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _wait_for_everyone(args)  # on_save runs on every process, after its share of the checkpoint
            if state.is_world_process_zero:
                ckpt = run / CHECKPOINTS / f"checkpoint-{state.global_step}"
                if ckpt.is_dir():
                    atomic_write_json(ckpt / COMPLETE_MARKER, {"step": int(state.global_step), "seconds": round(seconds(), 3)})
                finetune_loss_plot(state.log_history, run / "loss.png")
            faults.point(FAULT_POINT, "after")

    return RunCallback()


def complete_checkpoints(run: Path) -> list[Path]:
    """Checkpoints marked complete, oldest first."""
    root = run / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("checkpoint-") and (p / COMPLETE_MARKER).is_file():
            try:
                found.append((int(p.name.split("-", 1)[1]), p))
            except ValueError:
                continue
    return [p for _, p in sorted(found)]


def _read_state(run: Path) -> dict[str, Any]:
    path = run / STATE_FILE
    if not path.is_file():
        raise InputError(f"{run} is not a finetune run directory (no {STATE_FILE}): give the --out of an earlier `longsearch finetune`")
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"{path} cannot be read ({e}): the run cannot be resumed; start a new one with --out") from None
    if state.get("kind") != "longsearch.finetune":
        raise RunError(f"{path} is not a longsearch finetune state file")
    return state


def check_world_size(state: dict[str, Any], world_size: int, run: Path) -> None:
    """Refuse resuming ``state`` with another process count than it was trained with (its data order would differ).

    A state written before the count was recorded was trained by one process.
    """
    was = int(state.get("world_size", 1))
    if was != world_size:
        n = lambda k: f"{k} process" + ("" if k == 1 else "es")  # noqa: E731
        launch = "without torchrun" if was == 1 else f"torchrun --nproc_per_node {was}"
        raise RunError(
            f"{run} was trained by {n(was)} and this launch has {n(world_size)}, which would read other data: "
            f"relaunch the resume with {n(was)} ({launch})"
        )


def prepare(opts: FinetuneOptions, resume: str | None = None, force: bool = False, accept_model_change: bool = False) -> dict[str, Any]:
    """Check everything and return the run's state (nothing is written): a new run's, or the one in ``resume``."""
    from .models import fingerprint_changes, load_config, model_fingerprint, model_geometry

    if resume is not None:
        given = [f"--{f.name.replace('_', '-')}" for f in fields(opts) if getattr(opts, f.name) is not None]
        if given or force:
            raise InputError(f"--resume continues a run with its own settings: drop {', '.join(given + (['--force'] if force else []))}")
        run = Path(resume)
        state = _read_state(run)
        if state.get("status") == "complete":
            raise InputError(f"{run} is complete (its model is in {run / MODEL_DIR}): start a new run with another --out")
        now = model_fingerprint(state["options"]["model"])
        changes = fingerprint_changes(state.get("model_fingerprint", {}), now)
        if changes and not accept_model_change:
            raise InputError(f"the model changed since this run started ({'; '.join(changes)}): restore it, or pass --accept-model-change")
        state["run"] = str(run)
        return state
    if opts.factors is None:
        raise InputError("give the searched factors: --factors RUN/best.json (or --resume DIR)")
    if opts.out is None:
        raise InputError("give the run directory to write: --out DIR")
    run = Path(opts.out)
    if run.exists() and not force:
        raise InputError(f"{run} already exists: continue it with --resume {run}, pick another --out, or pass --force to start over")
    config = load_config(opts.model)
    geometry = model_geometry(config)
    factors = load_factors(opts.factors, geometry=geometry)
    options = resolve_options(opts, factors)
    options["factors"] = str(opts.factors)
    if float(options["needle_share"]) > 0:  # every template must fit a short row (a needle set raises if not)
        from .models import load_tokenizer
        from .needles import build_needle_set, template_names

        tokenizer = load_tokenizer(opts.model)
        for t in template_names(options["template"]):
            try:
                build_needle_set(tokenizer, options["short_length"], 1, template=t, seed=0, haystack="train")
            except LongsearchError as e:
                raise InputError(f"short rows of {options['short_length']} tokens: {e} (or --needle-share 0)") from None
    return {
        "kind": "longsearch.finetune",
        "version": 1,
        "status": "new",
        "options": options,
        "factors": factors.to_dict(),
        "model_fingerprint": model_fingerprint(opts.model),
        "run": str(run),
    }


def run_finetune(
    opts: FinetuneOptions,
    *,
    resume: str | None = None,
    force: bool = False,
    accept_model_change: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    """Train (or continue training), then write ``model/``; returns where and what was logged."""
    import torch
    from transformers import TrainingArguments

    from .export import FACTORS_FILE
    from .models import config_with_factors, load_config, load_model, resolve_device

    state = prepare(opts, resume, force, accept_model_change)  # every process checks; none has written yet
    run = Path(state.pop("run"))
    o = state["options"]
    factors = RopeFactors.from_dict(state["factors"], source=str(run / STATE_FILE))
    resume_from: Path | None = None
    seconds_before = 0.0
    if resume is not None:
        done = complete_checkpoints(run)
        resume_from = done[-1] if done else None
        seconds_before = (checkpoint_seconds(resume_from) if resume_from else None) or 0.0

    device = resolve_device(o["device"])
    bf16 = o["bf16"] if o["bf16"] is not None else (device.type == "cuda" and torch.cuda.is_bf16_supported())
    grad_accum = int(o["grad_accum"])
    args = TrainingArguments(
        output_dir=str(run / CHECKPOINTS),
        max_steps=int(o["steps"]),
        per_device_train_batch_size=1,
        gradient_accumulation_steps=grad_accum,
        learning_rate=float(o["learning_rate"]),
        lr_scheduler_type="cosine",
        warmup_steps=int(o["warmup_steps"]),
        weight_decay=float(o["weight_decay"]),
        logging_steps=max(1, min(10, int(o["steps"]) // 50 or 1)),
        save_strategy="steps",
        save_steps=int(o["save_every"]),
        save_total_limit=2,
        seed=int(o["seed"]),
        data_seed=int(o["seed"]),
        bf16=bool(bf16),
        use_cpu=device.type == "cpu",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
        deepspeed=o["deepspeed"],
        fsdp=o["fsdp"] or "",
        fsdp_config=o["fsdp_config"],
    )
    # with several processes (one per device), the first one alone writes the run directory, once all have
    # checked it; the others wait for it
    world_size = int(args.world_size)
    main = int(args.process_index) == 0
    if resume is not None:  # process k reads items k, k + N, ...: another N would read other data
        check_world_size(state, world_size, run)
    state["world_size"] = world_size
    _wait_for_everyone(args)
    if main:
        if resume is not None:
            marked = set(complete_checkpoints(run))
            for p in (run / CHECKPOINTS).glob("checkpoint-*") if (run / CHECKPOINTS).is_dir() else []:
                if p not in marked:  # a checkpoint cut off while being written
                    shutil.rmtree(p, ignore_errors=True)
        else:
            if run.exists():  # --force: checked by prepare
                shutil.rmtree(run)
            run.mkdir(parents=True)
        state["status"] = "running"
        atomic_write_json(run / STATE_FILE, state)
    _wait_for_everyone(args)

    config = config_with_factors(load_config(o["model"]), factors)
    # loaded on the CPU in float32: Trainer places it (one device, or sharded by DeepSpeed / FSDP) and runs
    # bf16 as mixed precision over float32 weights
    lm = load_model(o["model"], device="cpu", dtype="float32", config=config, attn_implementation=o.get("attn_implementation"))
    model = lm.model
    # the loss is computed chunk by chunk from the final hidden states: proved equal to the full-logits loss first
    check_chunked_loss(model, torch.arange(1, 33)[None] % int(model.config.get_text_config().vocab_size))
    model.train()
    if o["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
    # every process reads its own share of the items (process k: items k, k + world_size, ...): world_size
    # micro-batches per accumulation step, none of them read twice
    data = MixedWindowData(
        lm.tokenizer,
        world_size * int(o["steps"]) * grad_accum,
        o["long_length"],
        o["short_length"],
        float(o["short_ratio"]),
        float(o["needle_share"]),
        o["template"],
        float(o["answer_weight"]),
        int(o["seed"]),
    )

    def seconds_so_far() -> float:  # training seconds: this invocation's trainer.train() and those before it
        return seconds_before + time.perf_counter() - t0

    trainer_cls = _make_trainer_class()
    trainer = trainer_cls(
        model=model, args=args, train_dataset=data, data_collator=_collate, callbacks=[_make_callback(run, seconds_so_far)]
    )
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = seconds_so_far()

    # the model directory: written whole under a temporary name, then renamed (every process takes part in
    # gathering sharded weights; the first one writes)
    final = run / MODEL_DIR
    tmp = run / f".{MODEL_DIR}.partial"
    if trainer.is_world_process_zero() and tmp.exists():
        shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    trainer.accelerator.wait_for_everyone()
    history = [dict(h) for h in trainer.state.log_history]
    if trainer.is_world_process_zero():
        lm.tokenizer.save_pretrained(str(tmp))
        factors.save(tmp / FACTORS_FILE)
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle of Trainer's settings: finetune.json has them
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        finetune_loss_plot(history, run / "loss.png")
        if not o["keep_checkpoints"]:
            shutil.rmtree(run / CHECKPOINTS, ignore_errors=True)
        state.update(status="complete", seconds=seconds, log_history=history, steps_done=int(trainer.state.global_step))
        state["resumed_from"] = resume_from.name if resume_from else None
        atomic_write_json(run / STATE_FILE, state)
    model.eval()
    return FinetuneResult(
        out=run,
        model_dir=final,
        steps=int(trainer.state.global_step),
        seconds=seconds,
        log_history=history,
        resumed_from=int(resume_from.name.split("-")[1]) if resume_from else None,
        model=model,
        main_process=main,
    )
