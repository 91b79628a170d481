"""One fuzz target under atheris (libFuzzer): ``python -m tests.fuzz.engine TARGET [FLAGS]
[CORPUS_DIR ...]``. FLAGS and corpus folders are libFuzzer's (``-max_total_time=``,
``-timeout=``, ``-rss_limit_mb=``, ``-max_len=``, ``-artifact_prefix=``, ``-runs=``).

The harness module and everything it imports from ``canonical`` and ``adapters`` are
loaded under atheris instrumentation, so coverage guides the mutations through the
parsers themselves. An input that makes ``run`` raise anything outside the harness's
``ALLOWED`` types is a crash: libFuzzer writes it to ``-artifact_prefix`` and stops.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Sequence

import atheris

from tests.fuzz import TARGETS


def main(argv: Sequence[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(
            f"usage: python -m tests.fuzz.engine TARGET [libFuzzer flags]; TARGET in {TARGETS}"
        )
    name = argv[1]
    with atheris.instrument_imports(include=["canonical", "adapters"]):
        harness = importlib.import_module(f"tests.fuzz.{name}")
    allowed: tuple[type[BaseException], ...] = tuple(harness.ALLOWED)
    run = harness.run

    def one_input(data: bytes) -> None:
        with contextlib.suppress(*allowed):
            run(data)

    atheris.Setup([argv[0], *argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
