"""`imagine demo`: run the whole system locally against the simulator."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from imagine.demo import SAMPLE, DemoError, run_demo


@click.command("demo")
@click.option("--serve", is_flag=True, help="Keep the gallery up after the batch finishes.")
@click.option("--real", is_flag=True, help="Generate on fal.ai with FAL_KEY (costs money).")
@click.option(
    "--prompts",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=SAMPLE,
    show_default="the bundled sample",
    help="A prompts file (.txt, .csv or .jsonl).",
)
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait.")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/demo"),
    show_default=True,
    help="Where the demo keeps its database, broker, archive and logs.",
)
def demo(serve: bool, real: bool, prompts: Path, timeout: float, workdir: Path) -> None:
    """Enqueue a sample batch and watch it go through the real pipeline, offline by default."""
    try:
        code = run_demo(
            Console(), real=real, serve=serve, prompts=prompts, timeout=timeout, workdir=workdir
        )
    except DemoError as exc:
        raise click.ClickException(str(exc)) from exc
    raise SystemExit(code)
