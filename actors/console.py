"""Where the command line's result tables go (status, chaos verdicts, benchmark results)."""

from __future__ import annotations

import os
from typing import Any

WIDE = 160     # columns for tables printed to a file or a pipe


def result_console() -> Any:
    """A rich console on stdout: as wide as the terminal, or ``WIDE`` columns when stdout is a file
    or a pipe and ``COLUMNS`` does not say otherwise (rich would assume 80 there and cut the column
    headers of a wide table down to "p50 …")."""
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=WIDE)
    return console
