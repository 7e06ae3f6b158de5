"""Rendering on the terminal, for the CLI layer only: library modules report through plain objects and
callbacks (:class:`~longsearch.evolve.EvolveReporter`, data from :mod:`~longsearch.needles`) and never print.

- :class:`RichReporter`: a search's progress (a bar per generation, one line per generation, the held-out table);
- :func:`render_needle_set`: a needle set's manifest and one sample with the needle, question and answer marked;
- :func:`render_info`: ``longsearch info``'s geometry summary and per-frequency table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import InputError
from .evolve import EvolveReporter, EvolveResult
from .executors import ScoreOutcome
from .info import INFO_METHODS, InfoReport
from .lengths import format_length
from .loop import GenerationSummary
from .needles import NeedleSet, sample_segments
from .runs import JournalRecord
from .runstart import PreparedRun


def _fmt_period(p: float) -> str:
    return f"{p:,.1f}" if p < 1e6 else f"{p:.3e}"


def render_info(console: Any, report: InfoReport) -> None:
    """``longsearch info``: the geometry summary and the per-frequency λ table of :func:`~longsearch.info.model_info`."""
    from rich.table import Table

    g, target_length = report.geometry, report.target_length
    name = report.model if report.model is not None else "embedded testbed"
    console.print(f"[bold]model[/]             {name}", highlight=False)
    console.print(f"rotary dim d      {g.rotary_dim}  ({g.n_freq} frequencies)")
    console.print(f"base b            {g.base:g}")
    console.print(f"original window L {g.original_length}")
    console.print(f"target L'         {target_length} ({format_length(target_length)})")
    console.print(f"scale s           {report.scale:g}")
    console.print(f"d_tcd             {report.critical_index}  (first frequency whose period exceeds L)")
    console.print(f"d_rcd range       [{report.critical_index_lower}, {report.critical_index}]  (LongRoPE2's search range)")
    m = ", ".join(f"{title} {report.attention[key]:.4f}" for key, title in INFO_METHODS)
    console.print(f"attention factor  {m}")
    if report.layers:
        kinds = Table(title="RoPE per layer type (λ applies to the rescaled ones; the rest keep their own RoPE)")
        for column in ("layer type", "layers", "base", "rotary dim", "sliding window", "rope type", "rescaled"):
            kinds.add_column(column, justify="left" if column in ("layer type", "rope type") else "right", no_wrap=column == "layer type")
        for lr in report.layers:
            kinds.add_row(
                lr.layer_type or "all",
                str(lr.layers),
                f"{lr.base:g}",
                str(lr.rotary_dim),
                str(lr.window) if lr.window else "–",
                lr.rope_type,
                "yes" if lr.rescaled else "no",
            )
        console.print(kinds)

    table = Table(title=f"per-frequency λ at {format_length(target_length)}", show_lines=False)
    table.add_column("i", justify="right")
    table.add_column("period (tokens)", justify="right")
    table.add_column("> L", justify="center")
    for _, title in INFO_METHODS:
        table.add_column(f"λ {title}", justify="right")
    for i in range(g.n_freq):
        marker = " ◂ d_tcd" if i == report.critical_index else ""
        row = [f"{i}{marker}", _fmt_period(float(report.periods[i])), "yes" if report.beyond_window[i] else "no"]
        row += [f"{report.lambdas[key][i]:.4f}" for key, _ in INFO_METHODS]
        table.add_row(*row, style="bold" if i == report.critical_index else None)
    console.print(table)


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
            f"  needles  {run.needles.template}, {len(run.needles.samples)} documents, long factors at every served length: "
            f"{run.needles.describe()}; depths {c.depths or 'start'}"
        )
        if run.validation is not None and c.validation:
            stop = f"; stops after {c.patience} generations without a better one" if c.patience else ""
            self._print(
                f"  validate {c.validation['template']} on {c.validation['haystack']} text, {len(run.validation.samples)} documents "
                f"(never seen by the optimizer; chooses the final factors{stop})"
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

    def generation_started(self, generation: int, generations: int | None, to_evaluate: int, reused: int) -> None:
        note = f" ({reused} from journal)" if reused else ""
        of = "" if generations is None else f"/{generations - 1}"  # None: a cost budget
        self._new_task(f"generation {generation}{of}{note}", to_evaluate)

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
        failed = f"  [yellow]{s.failed} failed[/]" if s.failed else "  0 failed"
        if s.generations is None:  # a cost budget: how much of it is spent
            gen = f"gen {s.generation:>3} ({s.spent:.0f}/{s.max_cost or 0:g} evals' worth)"
        else:
            gen = f"gen {s.generation:>3}/{s.generations - 1}"
        val = "" if s.validation_score is None else f"  validation {s.validation_score:.4f} (#{s.validation_id})"
        self._print(f"{gen}  best [bold]{best}[/] (#{s.best_id} {s.best_origin}{d}){val}  best baseline {base}  {rate}{failed}")
        if s.stopping:
            self._print("  stop     no better validation score for the patience given: the search stops here")

    def retry_started(self, to_evaluate: int, reused: int) -> None:
        note = f" ({reused} retried already, from journal)" if reused else ""
        self._print(f"  retry    {to_evaluate + reused} failed evaluation(s) of earlier generations, evaluated again{note}")
        self._new_task("retrying failures", to_evaluate)

    def retry_finished(self, recovered: int, still_failed: int) -> None:
        rest = f", [yellow]{still_failed} failed again[/]" if still_failed else ""
        self._print(f"  retry    {recovered} recovered (told to the optimizer late){rest}")

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
        failed = result.final.get("failed", [])
        if result.heldout:
            from rich.markup import escape

            t = Table(title="held-out needles (another seed; the served lengths, long factors at each)", title_style="bold")
            t.add_column("method")
            t.add_column("held-out NLL", justify="right")
            t.add_column("accuracy", justify="right")
            per_length = any(r.per_length and len(r.per_length) > 1 for r in result.heldout)
            if per_length:
                t.add_column("accuracy per length", justify="right")
            t.add_column("search NLL", justify="right")
            notes = failed or any(r.error for r in result.heldout)
            if notes:
                t.add_column("failure")
            for r in result.heldout:
                name = "[bold]longsearch (chosen)[/]" if r.name == "longsearch" else r.name
                nll = "failed" if r.error and not math.isfinite(r.nll) else f"{r.nll:.4f}"
                acc = "—" if r.accuracy is None else f"{r.accuracy:.1%}"
                sn = "—" if r.search_nll is None or not math.isfinite(r.search_nll) else f"{r.search_nll:.4f}"
                lengths = [
                    " ".join(
                        f"{format_length(p['length'])} {p['accuracy']:.2f}" for p in (r.per_length or []) if p.get("accuracy") is not None
                    )
                ]
                t.add_row(name, nll, acc, *(lengths if per_length else []), sn, *([escape(r.error or "")] if notes else []))
            if failed:  # what failed in the search itself: not scored on the held-out set
                t.add_section()
                for f in failed:
                    name = f"candidate {f['id']}" if f.get("kind", "candidate") == "candidate" else f"baseline {f['name']}"
                    again = "a resume evaluates it again" if f.get("retried_on_resume") else "for good"
                    why = f"failed {f['attempts']}× ({again}): {f['error']}"
                    t.add_row(f"[yellow]{name}[/]", "—", "—", *(["—"] if per_length else []), "[yellow]failed[/]", escape(why))
            self._print(t)
        ch = result.final.get("choice") or {}
        if ch:

            def shown(d: Any) -> str:
                return "—" if not d or d.get("accuracy") is None else f"{d['accuracy']:.2f}"

            self._print(
                f"  chosen   #{ch['candidate']} by {ch['chosen_by']}: accuracy on the search needles {shown(ch.get('search'))}, "
                f"validation {shown(ch.get('validation'))}, held-out {shown(ch.get('heldout'))}"
                + "".join(f"; {k.replace('_', ' ')} {v:+.2f}" for k, v in (ch.get("gaps") or {}).items())
            )
        ra = result.final.get("rank_agreement") or {}
        if ra.get("spearman") is not None:
            self._print(
                f"  rank agreement of search and held-out NLL (Spearman over {ra['n']} candidates and baselines): {ra['spearman']:.2f}"
            )
        for key, p in result.paths.items():
            self._print(f"  {key:<9}{p}")

    def interrupted(self, run_dir: Path) -> None:
        self.progress.stop()
        self._print(f"[yellow]interrupted[/]: the journal is consistent; continue with `longsearch evolve --resume {run_dir}`")
