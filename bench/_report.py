"""What every benchmark ends with: the table on the terminal and the same table, with its command, in Markdown."""

from __future__ import annotations

import sys
from pathlib import Path


def emit_table(
    console,
    title: str,
    headers: list[str],
    rows: list[list[str]],
    preamble: list[str],
    notes: list[str],
    out: str | Path,
    left: tuple[str, ...] = (),
) -> None:
    """Print ``rows`` as a rich table and write ``out``: a heading, the command line, ``preamble``, the table, ``notes``."""
    from rich.table import Table

    table = Table(title=title)
    for h in headers:
        table.add_column(h, justify="left" if h in left else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)

    script = Path(sys.argv[0]).as_posix()
    script = script[script.index("bench/") :] if "bench/" in script else script
    md = [
        f"# {title.split(':')[0].capitalize()} ({script})",
        "",
        f"Command: `{('python ' + script + ' ' + ' '.join(sys.argv[1:])).strip()}`  ",
        *preamble,
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        *notes,
        "",
    ]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(md))
    console.print(f"wrote {out}")
