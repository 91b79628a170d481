"""What the demo prints: calm lines a person can follow, and the summary table.

Colour only on a terminal and never when ``NO_COLOR`` is set (https://no-color.org).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class StepResult:
    number: int
    what: str
    ok: bool
    seconds: float
    detail: str = ""


class Terminal:
    """Writes the demo's story to ``stream``."""

    def __init__(self, stream: TextIO | None = None, *, color: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        if color is None:
            color = self.stream.isatty() and "NO_COLOR" not in os.environ
        self.color = color

    def _paint(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def bold(self, text: str) -> str:
        return self._paint("1", text)

    def dim(self, text: str) -> str:
        return self._paint("2", text)

    def green(self, text: str) -> str:
        return self._paint("32", text)

    def red(self, text: str) -> str:
        return self._paint("31", text)

    def cyan(self, text: str) -> str:
        return self._paint("36", text)

    def line(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def title(self, text: str) -> None:
        self.line()
        self.line(self.bold(text))
        self.line(self.bold("=" * len(text)))

    def section(self, text: str) -> None:
        self.line()
        self.line(self.bold(text))

    def step(self, number: int, text: str) -> None:
        self.line()
        self.line(self.bold(f"{number}. {text}"))

    def said(self, who: str, text: str) -> None:
        """What a user does or sees, indented under the step."""
        self.line(f"   {self.cyan(who)} {text}")

    def detail(self, text: str) -> None:
        self.line(self.dim(f"      {text}"))

    def ok(self, text: str) -> None:
        self.line(f"   {self.green('✓')} {text}")

    def fail(self, text: str) -> None:
        self.line(f"   {self.red('✗')} {text}")

    def table(self, results: list[StepResult]) -> None:
        """The summary: each step, its result and its time."""
        width = max((len(r.what) for r in results), default=10)
        self.line(f"  {'#':>2}  {'step':<{width}}  {'result':<6}  {'time':>7}")
        self.line(f"  {'-' * 2}  {'-' * width}  {'-' * 6}  {'-' * 7}")
        for r in results:
            mark = self.green("ok    ") if r.ok else self.red("FAILED")
            self.line(f"  {r.number:>2}  {r.what:<{width}}  {mark}  {r.seconds:>6.2f}s")
