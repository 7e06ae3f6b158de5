"""The ``longsearch`` command line: one short function per command; library code never prints.

Errors a user can cause (:class:`LongsearchError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

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

MODEL_HELP = "Hub id or local directory of a transformers model (default: the embedded testbed model)."


# ---------------------------------------------------------------- info


@app.command()
def info(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    target: str = typer.Option(..., "--target", "-t", help="Target context length, e.g. 32k, 128k, 1m."),
) -> None:
    """Show a model's RoPE geometry and what PI, NTK, YaRN and Llama-3 do to each frequency."""
    from .info import render_info

    render_info(console, model, target)


# ---------------------------------------------------------------- needles (needles.py)

# ---------------------------------------------------------------- testbed (tiny/)

# ---------------------------------------------------------------- evolve (evolve.py)

# ---------------------------------------------------------------- export / eval (export.py, evaluate.py)


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
    except Exception as e:  # click's usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
