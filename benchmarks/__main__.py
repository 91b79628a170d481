"""``python -m benchmarks`` (``make bench``): run cpimgw's benchmarks one after another.

Each benchmark measures its own baseline in the same run and prints ratios against it
(the machines are shared and noisy; a ratio from one run is what counts). The ones that
start real servers (Prosody, Kamailio, Redis) do so on loopback and stop them.

    python -m benchmarks                 # the quick, server-less set
    python -m benchmarks --all           # everything, e2e included (minutes)
    python -m benchmarks codec sip       # just these
"""

from __future__ import annotations

import argparse
import subprocess
import sys

#: name -> (needs real servers, extra arguments for a short default run)
BENCHMARKS: dict[str, tuple[bool, list[str]]] = {
    "codec": (False, []),
    "core": (False, []),
    "xmpp": (True, []),
    "sip": (True, []),
    "http": (False, []),
    "cluster": (True, []),
    "e2e": (True, []),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(BENCHMARKS))
    parser.add_argument("--all", action="store_true", help="also the ones that start servers")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    names = args.names or [n for n, (servers, _) in BENCHMARKS.items() if args.all or not servers]
    failed = []
    for name in names:
        print(f"\n=== benchmarks.{name} ===", flush=True)
        status = subprocess.call([sys.executable, "-m", f"benchmarks.{name}", *BENCHMARKS[name][1]])
        if status != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
