"""The testbed's model card: measured answer-token NLL and needle accuracy per method and length.

``longsearch testbed card`` recomputes the table with the project's own scorer (:func:`longsearch.scoring.score`)
on needle sets built from held-out prose with a seed that training never draws from, for plain RoPE, PI,
NTK-aware and YaRN at 1×, 2×, 4×, 8× and 16× the window, and writes it into ``MODEL_CARD.md`` beside the
weights (only the generated regions are replaced; hand-written text stays).

>>> from longsearch.tiny.card import measure_card
>>> card = measure_card(None, n_samples=20)  # doctest: +SKIP
>>> card.cell("yarn", 4).accuracy  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import atomic_write_json, atomic_write_text
from ..errors import InputError

log = logging.getLogger(__name__)

CARD_METHODS: tuple[str, ...] = ("none", "pi", "ntk", "yarn")
CARD_SCALES: tuple[int, ...] = (1, 2, 4, 8, 16)
CARD_SEED = 1234  # never used by training (training draws from its seed; its own held-out check from 1_000_003 + seed)
CARD_HAYSTACK = "heldout"
CARD_DEPTHS = None  # the project's default: the needle near the start (depth in [0, 0.1]), the question at the end
METHOD_TITLES = {"none": "plain RoPE", "pi": "PI", "ntk": "NTK-aware", "yarn": "YaRN"}
TABLE_BEGIN, TABLE_END = "<!-- longsearch:card-table -->", "<!-- /longsearch:card-table -->"
FACTS_BEGIN, FACTS_END = "<!-- longsearch:card-facts -->", "<!-- /longsearch:card-facts -->"


@dataclass
class CardCell:
    """One method at one length: mean answer-token NLL (nats/token) and greedy exact-match accuracy."""

    method: str
    scale: int
    length: int
    nll: float
    accuracy: float
    n_samples: int
    seconds: float


@dataclass
class CardTable:
    """The card's measurements and how they were taken."""

    model: str
    window: int
    seed: int
    template: str
    haystack: str
    n_samples: int
    depths: str | None = None
    cells: list[CardCell] = field(default_factory=list)

    def cell(self, method: str, scale: int) -> CardCell:
        for c in self.cells:
            if c.method == method and c.scale == scale:
                return c
        raise KeyError((method, scale))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CardTable:
        cells = [CardCell(**c) for c in d.get("cells", [])]
        return cls(**{**{k: v for k, v in d.items() if k != "cells"}, "cells": cells})


ProgressFn = Callable[[int, int, str], None]


def measure_card(
    model: str | os.PathLike | None = None,
    *,
    n_samples: int = 40,
    seed: int = CARD_SEED,
    template: str = "passkey",
    methods: Sequence[str] = CARD_METHODS,
    scales: Sequence[int] = CARD_SCALES,
    haystack: str = CARD_HAYSTACK,
    depths: str | None = CARD_DEPTHS,
    device: str = "cpu",
    progress: ProgressFn | None = None,
) -> CardTable:
    """Score ``methods`` at ``scales`` × the model's window with the project's scorer; None = the shipped testbed."""
    from ..models import load_model
    from ..needles import build_needle_set
    from ..scoring import score

    for m in methods:
        if m not in METHOD_TITLES and m != "none":
            raise InputError(f"unknown card method {m!r}: use {', '.join(CARD_METHODS)}")
    if n_samples < 1:
        raise InputError(f"--samples must be at least 1, got {n_samples}")
    lm = load_model(model, device=device, dtype="float32")
    window = lm.geometry.original_length
    table = CardTable(
        model=str(model) if model is not None else "testbed",
        window=window,
        seed=seed,
        template=template,
        haystack=haystack,
        n_samples=n_samples,
        depths=depths,
    )
    total = len(methods) * len(scales)
    done = 0
    for scale in scales:
        length = window * scale
        nset = build_needle_set(lm.tokenizer, length, n_samples, template=template, seed=seed, depths=depths, haystack=haystack)
        for method in methods:
            result = score(lm, nset, method, target_length=length)
            table.cells.append(
                CardCell(method, scale, length, float(result.nll), float(result.accuracy), len(nset.samples), float(result.seconds))
            )
            done += 1
            if progress is not None:
                progress(done, total, f"{method} at {scale}× ({length} tokens)")
    return table


# ---------------------------------------------------------------- rendering


def render_table(table: CardTable) -> str:
    """The card's markdown table: one row per method, one column per length; each cell ``accuracy · NLL``."""
    scales = sorted({c.scale for c in table.cells})
    methods = [m for m in CARD_METHODS if any(c.method == m for c in table.cells)]
    methods += sorted({c.method for c in table.cells} - set(methods))
    head = "| method | " + " | ".join(f"{s}× ({table.window * s})" for s in scales) + " |"
    sep = "| --- |" + " --- |" * len(scales)
    lines = [
        f"Needle accuracy (greedy answer exactly right) · answer-token NLL (nats/token); template `{table.template}`, "
        f"{table.n_samples} samples per length, haystack `{table.haystack}`, seed {table.seed}, needle depths "
        f"{'uniform in [0, 1]' if table.depths == 'uniform' else 'in [0, 0.1] (near the start)' if table.depths is None else table.depths}.",
        "",
        head,
        sep,
    ]
    for m in methods:
        cells = []
        for s in scales:
            try:
                c = table.cell(m, s)
                cells.append(f"{c.accuracy:.2f} · {c.nll:.2f}")
            except KeyError:
                cells.append("–")
        lines.append(f"| {METHOD_TITLES.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_facts(model_dir: Path) -> str:
    """Size, architecture and training time, read from the model directory."""
    cfg = json.loads((model_dir / "config.json").read_text())
    log_path, tc_path = model_dir / "train_log.json", model_dir / "train_config.json"
    lines = [
        "| | |",
        "| --- | --- |",
        f"| architecture | `LlamaForCausalLM`, {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, "
        f"{cfg['num_attention_heads']} heads × head_dim {cfg.get('head_dim')}, MLP {cfg['intermediate_size']}, tied embeddings |",
        f"| RoPE | base {cfg.get('rope_parameters', {}).get('rope_theta', cfg.get('rope_theta'))}, "
        f"{cfg.get('head_dim', 0) // 2} rotary frequencies, window {cfg['max_position_embeddings']} tokens |",
        f"| tokenizer | bytes (256) + `<s>` `</s>` `<pad>`; vocabulary {cfg['vocab_size']} (one unused row) |",
    ]
    if log_path.exists():
        tl = json.loads(log_path.read_text())
        lines.append(f"| parameters | {tl['n_params']:,} |")
        lines.append(f"| training time | {tl['seconds'] / 60:.1f} min ({tl.get('machine', 'CPU')}) |")
        if tl.get("evals"):
            last = tl["evals"][-1]
            lines.append(f"| held-out needle accuracy during training (last check, step {last[0]}) | {last[1]:.2f} |")
    if tc_path.exists():
        tc = json.loads(tc_path.read_text())
        lines.append(
            f"| training | {tc['steps']} steps × batch {tc['batch_size']}, AdamW lr {tc['lr']}, seed {tc['seed']}, "
            f"{tc['threads']} threads |"
        )
    try:
        size = (model_dir / "model.safetensors").stat().st_size
        lines.append(f"| weights | model.safetensors, {size / 2**20:.1f} MiB (float32) |")
    except OSError:
        pass
    return "\n".join(lines)


def _replace_region(text: str, begin: str, end: str, body: str) -> str:
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    block = f"{begin}\n{body}\n{end}"
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + "\n\n" + block + "\n"


DEFAULT_CARD = """# longsearch testbed model

A byte-level Llama trained by `longsearch testbed train`.

## Facts

{facts_begin}
{facts_end}

## Measured without fine-tuning

{table_begin}
{table_end}
"""


def write_card(card_path: str | os.PathLike, model_dir: str | os.PathLike, table: CardTable) -> Path:
    """Write the facts and the table into the card at ``card_path`` (created if absent; text outside the
    generated regions is kept) and the raw numbers into ``model_dir/card_table.json``."""
    path, d = Path(card_path), Path(model_dir)
    text = (
        path.read_text()
        if path.exists()
        else DEFAULT_CARD.format(facts_begin=FACTS_BEGIN, facts_end=FACTS_END, table_begin=TABLE_BEGIN, table_end=TABLE_END)
    )
    text = _replace_region(text, FACTS_BEGIN, FACTS_END, render_facts(d))
    text = _replace_region(text, TABLE_BEGIN, TABLE_END, render_table(table))
    atomic_write_text(path, text)
    atomic_write_json(d / "card_table.json", table.to_dict())
    return path


def card_paths(model: str | os.PathLike | None) -> tuple[Path, Path]:
    """(card file, model directory): the shipped testbed's card is ``longsearch/tiny/MODEL_CARD.md`` beside
    ``tiny/model/``; a local model directory gets ``DIR/MODEL_CARD.md``."""
    from ..models import TESTBED_DIR

    if model is None:
        return TESTBED_DIR.parent / "MODEL_CARD.md", TESTBED_DIR
    p = Path(os.path.expanduser(str(model)))
    if not p.is_dir():
        raise InputError(f"{model} is not a local model directory: the card is written beside local weights only")
    return p / "MODEL_CARD.md", p


__all__ = [
    "CARD_METHODS",
    "CARD_SCALES",
    "CARD_SEED",
    "CardCell",
    "CardTable",
    "card_paths",
    "measure_card",
    "render_facts",
    "render_table",
    "write_card",
]
