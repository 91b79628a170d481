"""Collect the cases for an adapter and run them: the suite.

The suite for one adapter is: the kit's own cases (``cases/*.json``: presence,
subscriptions, failures, malformed native input, the laws as properties), every vector of
the shipped vector folder and of each folder the user adds, and for every peer adapter the
cross-protocol journeys of the canonical, signed and native vectors.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.conformance.case import Case, Check, Expect, load_case_folder
from adapters.conformance.checks import Bench, run_case
from adapters.conformance.folder import VectorFolder, default_folder
from adapters.conformance.grade import Grade, Outcome
from adapters.conformance.report import Report, Result
from adapters.conformance.target import Target

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

#: Called after each case: (cases done, cases in all, the case, its outcome).
Progress = Callable[[int, int, Case, Outcome], None]


def builtin_cases() -> list[Case]:
    """The kit's own cases, shipped as data: ``adapters/conformance/cases`` (the case
    format) and ``adapters/conformance/vectors`` (the vector layout; its ``native/KIND/``
    wire samples are the journeys that start from a built-in adapter's own network)."""
    here = Path(__file__).resolve().parent
    return [*load_case_folder(here / "cases"), *VectorFolder(here / "vectors").cases()]


def hypothesis_installed() -> bool:
    return importlib.util.find_spec("hypothesis") is not None


#: Which base cases also travel through each peer.
def _crosses(case: Case, kind: str) -> bool:
    if case.check in {Check.CANONICAL, Check.SIGNED}:
        return True
    return case.check is Check.NATIVE and case.kind == kind and case.expect is Expect.EQUAL


@dataclass(slots=True)
class Suite:
    """The cases for one target and the settings to run them with.

    ``examples`` overrides the example count of property cases; ``natives`` is a
    hypothesis strategy of the target's wire messages (an author's generator) for the L2
    property; without it natives are derived from generated text messages.
    """

    target: Target
    cases: list[Case]
    peers: dict[str, Target] = field(default_factory=dict)
    folders: tuple[Path, ...] = ()
    notes: list[str] = field(default_factory=list)
    examples: int | None = None
    natives: SearchStrategy[bytes] | None = None
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @classmethod
    def collect(
        cls,
        target: Target,
        *,
        folders: Iterable[Path] = (),
        peers: Iterable[Target] = (),
        include_default_folder: bool = True,
        properties: bool = True,
        examples: int | None = None,
        natives: SearchStrategy[bytes] | None = None,
    ) -> Suite:
        """Every case that applies to ``target`` (native cases only of its kind)."""
        notes: list[str] = []
        chosen = [default_folder()] if include_default_folder else []
        chosen += [Path(f) for f in folders]
        cases = builtin_cases()
        seen = {case.id for case in cases}
        for index, folder in enumerate(chosen):
            vector_folder = VectorFolder(folder)
            notes.extend(
                f"not a vector (layout unknown), not read: {unknown}"
                for unknown in vector_folder.unknown_files()
            )
            for case in vector_folder.cases():
                unique = case if case.id not in seen else replace(case, id=f"{index}:{case.id}")
                seen.add(unique.id)
                cases.append(unique)
        cases = [c for c in cases if c.kind is None or c.kind == target.kind]
        if properties and not hypothesis_installed():
            notes.append(
                "property cases (laws L1-L3 on generated examples) not run: hypothesis is "
                "not installed (pip install 'cpimgw[test]')"
            )
            properties = False
        if not properties:
            cases = [c for c in cases if c.check is not Check.PROPERTY]
        peer_map = {p.name: p for p in peers if p.name != target.name}
        crossing = [c for c in cases if _crosses(c, target.kind)]
        for peer in peer_map.values():
            cases.extend(case.across(peer.name) for case in crossing)
        return cls(
            target=target,
            cases=cases,
            peers=peer_map,
            folders=tuple(chosen),
            notes=notes,
            examples=examples,
            natives=natives,
        )

    def run_one(self, case: Case, bench: Bench | None = None) -> Outcome:
        """Run and grade one case; an error of the kit itself is a FAIL that says so."""
        bench = bench or Bench(now=self.now, peers=self.peers)
        try:
            if case.check is Check.PROPERTY:
                from adapters.conformance.law import run_property  # noqa: PLC0415

                return run_property(
                    case, self.target, bench, examples=self.examples, natives=self.natives
                )
            return run_case(case, self.target, bench)
        except Exception as exc:  # noqa: BLE001 - reported per case, the run goes on
            return Outcome(
                Grade.FAIL,
                f"the suite could not run this case: {type(exc).__name__}: {exc}",
            )

    def new_report(self) -> Report:
        """An empty report describing this suite's target, peers and folders."""
        target = self.target
        return Report(
            adapter=target.name,
            kind=target.kind,
            distribution=target.distribution,
            version=target.version,
            capabilities=tuple(sorted(c.value for c in target.capabilities)),
            peers=tuple(self.peers),
            folders=tuple(str(f) for f in self.folders),
            started=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            notes=list(self.notes),
        )

    def run(self, progress: Progress | None = None) -> Report:
        """Run every case in order and return the report."""
        report = self.new_report()
        bench = Bench(now=self.now, peers=self.peers)
        began = time.perf_counter()
        for index, case in enumerate(self.cases, start=1):
            start = time.perf_counter()
            outcome = self.run_one(case, bench)
            report.results.append(Result(case, outcome, time.perf_counter() - start))
            if progress is not None:
                progress(index, len(self.cases), case, outcome)
        report.seconds = time.perf_counter() - began
        return report


def peers_installed(
    exclude: str, names: Sequence[str] | None = None
) -> tuple[list[Target], list[str]]:
    """Targets for the installed adapters that load (all, or those named), and a note for
    each one that cannot be used as a peer."""
    from adapters.contract import available  # noqa: PLC0415

    targets: list[Target] = []
    notes: list[str] = []
    wanted = set(names) if names is not None else None
    for info in available():
        if info.name == exclude or (wanted is not None and info.name not in wanted):
            continue
        if info.adapter is None:
            notes.append(f"peer {info.name} not used: {info.error}")
            continue
        try:
            targets.append(Target.installed(info.name))
        except Exception as exc:  # noqa: BLE001 - a broken peer is noted, not fatal
            notes.append(f"peer {info.name} not used: {exc}")
    if wanted is not None:
        found = {t.name for t in targets} | {n.split()[1] for n in notes}
        notes.extend(f"peer {name} not used: not installed" for name in sorted(wanted - found))
    return targets, notes


def run_suite(target: Target, **options: Any) -> Report:
    """Collect and run in one call (keyword options as :meth:`Suite.collect`)."""
    return Suite.collect(target, **options).run()
