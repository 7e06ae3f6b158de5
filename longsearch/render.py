"""Rendering on the terminal, for the CLI layer only: library modules report through plain objects and
callbacks (:class:`~longsearch.evolve.EvolveReporter`, data from :mod:`~longsearch.needles`) and never print.

- :class:`RichReporter`: a search's progress (a bar per generation, one line per generation, the held-out table);
- :func:`render_needle_set`: a needle set's manifest and one sample with the needle, question and answer marked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import InputError
from .evolve import EvolveReporter, EvolveResult, GenerationSummary, PreparedRun
from .lengths import format_length
from .needles import NeedleSet, sample_segments
from .runs import JournalRecord
from .workers import ScoreOutcome


def render_needle_set(console, ns: NeedleSet, tokenizer, index: int = 0, full: bool = False) -> None:
    """Show a set's manifest and one sample with the needle, question and answer marked (rich)."""
    from rich.table import Table
    from rich.text import Text

    from .lengths import format_length

    t = Table(show_header=False, box=None, pad_edge=False)
    hay = ns.meta.get("haystack", {})
    hay_desc = hay.get("split") or ", ".join(f["name"] for f in hay.get("files", [])) or "?"
    for k, v in [
        ("template", ns.template),
        ("length", f"{format_length(ns.length)} ({ns.length:,} tokens)"),
        ("samples", str(len(ns.samples))),
        ("seed", str(ns.seed)),
        ("tokenizer", f"{ns.tokenizer_name} (vocab {ns.vocab_hash})"),
        ("haystack", hay_desc),
        ("depths", json.dumps(ns.meta.get("depths", {}))),
    ]:
        t.add_row(f"[bold]{k}[/]", v)
    console.print(t)
    s = ns.samples[index] if 0 <= index < len(ns.samples) else None
    if s is None:
        raise InputError(f"sample {index} does not exist: this set has samples 0 to {len(ns.samples) - 1}")
    m = s.meta
    console.print(
        f"\n[bold]sample {index}[/]: key [cyan]{m.get('key') or '—'}[/], answer [bold green]{m['answer']}[/] "
        f"(tokens {s.answer_start}–{s.answer_end - 1}), needle at tokens {m['needle_start']}–{m['needle_end'] - 1} "
        f"(depth {m['depth']:.3f}, placed at {m['depth_actual']:.3f}), {len(m.get('distractors', []))} distractor(s)\n"
    )
    styles = {
        "text": "",
        "gap": "dim italic",
        "needle": "bold black on yellow",
        "distractor": "black on bright_black",
        "question": "bold cyan",
        "answer": "bold black on green",
    }
    text = Text()
    for kind, piece in sample_segments(ns, index, tokenizer, None if full else 160):
        text.append(piece, style=styles[kind])
    console.print(text, soft_wrap=True)


class RichReporter(EvolveReporter):
    """Renders a run on a rich console: a progress bar per generation (ETA, evaluations/s), one line per
    generation, and the held-out table at the end. Use as a context manager around :func:`run_evolve`."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
        from rich.text import Text

        class _Rate(ProgressColumn):
            def render(self, task: Any) -> Text:
                speed = task.finished_speed or task.speed
                return Text("" if not speed else f"{speed:.2f} eval/s", style="progress.data.speed")

        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._task: Any = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _print(self, *args: Any, **kw: Any) -> None:
        self.progress.console.print(*args, highlight=False, **kw)

    def _new_task(self, description: str, total: int) -> None:
        if self._task is not None:
            self.progress.remove_task(self._task)
        self._task = self.progress.add_task(description, total=max(total, 0))

    def run_started(self, run: PreparedRun) -> None:
        c = run.config
        state = "new run"
        if run.resumed:
            gen = run.optimizer.generation
            state = f"resumed at generation {gen} with {len(run.journal.records)} evaluations in the journal"
            if run.dropped_bytes:
                state += " (a truncated last line was dropped and will be re-run)"
        self._print(f"[bold]longsearch evolve[/] {c.model_name} → {format_length(c.target_length)}  ({state})")
        self._print(f"  run      {run.store.path}")
        self._print(f"  space    {run.space.describe()}")
        self._print(
            f"  needles  {run.needles.template}, {len(run.needles.samples)} documents of {run.needles.length} tokens, "
            f"depths {c.depths or 'start'}"
        )
        b = run.optimizer.budget
        if b.max_cost is not None:  # a cost budget: the number of generations is whatever the cost allows
            shape = (
                f"{b.max_cost:g} full evaluations' worth of token-forwards (population {b.population}, then "
                f"{b.per_generation} per generation)"
            )
        else:
            shape = f"{b.generations + 1} generations, {b.evaluations} evaluations"
        self._print(f"  search   {c.optimizer}, budget {c.budget}: {shape}; {c.samples} needle samples; seed {c.seed}")

    def pool_started(self, workers: int, device: str, seconds: float) -> None:
        self._print(f"  workers  {workers} on {device}, ready in {seconds:.1f} s")

    def signal_checked(self, signal: dict[str, Any]) -> None:
        parts = []
        for t, m in signal["templates"].items():
            acc = "failed" if m["accuracy"] is None else f"{m['accuracy']:.2f}"
            parts.append(f"{t} {acc} at {m['length']}" + (" ✓" if t in signal["solved"] else ""))
        self._print(f"  signal   in-window accuracy with plain RoPE (needs ≥ {signal['threshold']}): " + ", ".join(parts))

    def generation_started(self, generation: int, generations: int, to_evaluate: int, reused: int) -> None:
        note = f" ({reused} from journal)" if reused else ""
        self._new_task(f"generation {generation}/{generations - 1}{note}", to_evaluate)

    def evaluated(self, record: JournalRecord) -> None:
        if self._task is not None:
            self.progress.advance(self._task)
        if record.error:
            what = f"baseline {record.name}" if record.kind == "baseline" else f"candidate {record.id}"
            self._print(f"  [yellow]{what} failed:[/] {record.error}")

    def generation_finished(self, s: GenerationSummary) -> None:
        best = "—" if not math.isfinite(s.best_score) else f"{s.best_score:.4f}"
        d = "" if s.best_d_rcd is None else f", d_rcd {s.best_d_rcd}"
        base = "—" if s.baseline_name is None else f"{s.baseline_name} {s.baseline_score:.4f}"
        rate = f"{s.evaluated} evals in {s.seconds:.1f} s" + (f" ({s.evals_per_second:.2f}/s)" if s.evaluated else "")
        self._print(
            f"gen {s.generation:>3}/{s.generations - 1}  best [bold]{best}[/] (#{s.best_id} {s.best_origin}{d})"
            f"  best baseline {base}  {rate}"
        )

    def heldout_started(self, to_evaluate: int) -> None:
        self._new_task("held-out needles", to_evaluate)

    def heldout_evaluated(self, name: str, outcome: ScoreOutcome) -> None:
        if self._task is not None:
            self.progress.advance(self._task)

    def finished(self, result: EvolveResult) -> None:
        from rich.table import Table

        if self._task is not None:
            self.progress.remove_task(self._task)
            self._task = None
        if result.heldout:
            t = Table(title="held-out needles (another seed, same length)", title_style="bold")
            t.add_column("method")
            t.add_column("held-out NLL", justify="right")
            t.add_column("accuracy", justify="right")
            t.add_column("search NLL", justify="right")
            for r in result.heldout:
                name = "[bold]longsearch (best)[/]" if r.name == "longsearch" else r.name
                nll = "failed" if r.error and not math.isfinite(r.nll) else f"{r.nll:.4f}"
                acc = "—" if r.accuracy is None else f"{r.accuracy:.1%}"
                sn = "—" if r.search_nll is None or not math.isfinite(r.search_nll) else f"{r.search_nll:.4f}"
                t.add_row(name, nll, acc, sn)
            self._print(t)
        ra = result.final.get("rank_agreement") or {}
        if ra.get("spearman") is not None:
            self._print(
                f"  rank agreement of search and held-out NLL (Spearman over {ra['n']} candidates and baselines): {ra['spearman']:.2f}"
            )
        for f in result.final.get("failed", []):
            self._print(f"  [yellow]candidate {f['id']} failed {f['attempts']} time(s):[/] {f['error']}")
        for key, p in result.paths.items():
            self._print(f"  {key:<9}{p}")

    def interrupted(self, run_dir: Path) -> None:
        self.progress.stop()
        self._print(f"[yellow]interrupted[/]: the journal is consistent; continue with `longsearch evolve --resume {run_dir}`")
