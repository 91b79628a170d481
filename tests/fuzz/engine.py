"""One fuzz target under atheris (libFuzzer): ``python -m tests.fuzz.engine TARGET [FLAGS]
[CORPUS_DIR ...]``. FLAGS and corpus folders are libFuzzer's (``-max_total_time=``,
``-timeout=``, ``-rss_limit_mb=``, ``-max_len=``, ``-artifact_prefix=``, ``-runs=``).

The harness module and everything it imports from ``canonical`` and ``adapters`` are
loaded under atheris instrumentation, so coverage guides the mutations through the
parsers themselves. An input that makes ``run`` raise anything outside the harness's
``ALLOWED`` types is a crash: libFuzzer writes it to ``-artifact_prefix`` and stops —
except the findings listed in ``tests.fuzz.KNOWN_OPEN_CRASHES`` (open bugs in code the fuzz
suite does not own), which are let through so the run can look for new ones.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Sequence

import atheris

from tests.fuzz import KNOWN_OPEN_CRASHES, TARGETS


def known_open(exc: BaseException) -> bool:
    """True for a crash listed in ``KNOWN_OPEN_CRASHES`` (type and the file raising it)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = frames[-1].filename if frames else ""
    return any(
        type(exc).__name__ == name and where.endswith(path) for name, path in KNOWN_OPEN_CRASHES
    )


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
        try:
            run(data)
        except allowed:
            pass
        except Exception as exc:
            if not known_open(exc):
                raise

    atheris.Setup([argv[0], *argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
