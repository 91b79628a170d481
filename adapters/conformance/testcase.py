"""The test class an adapter author subclasses to run the conformance suite under pytest.

Like keyring's ``testing/backend.py``: the suite ships with cpimgw, and a plugin's own
test module only says which adapter to check::

    from adapters.conformance import AdapterConformance

    class TestIrcConformance(AdapterConformance):
        adapter = "irc"                      # entry-point name, or the Adapter class
        vectors = [HERE / "vectors"]         # extra folders (same layout as canonical/vectors)
        peers = ["memory"]                   # cross-protocol partners (None = all installed)

Every case becomes one test (``test_conformance_case[vector/cpim/001-minimal]``): FAIL
fails it, UNSUPPORTED skips it with the missing capability as the reason, PASS and
NON_STRICT pass. The ``cpimgw-conformance`` pytest plugin (loaded automatically) makes
the parameters and prints the grade table at the end; ``--conformance-report=FILE``
writes the JSON or HTML report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from adapters.conformance.case import Case
from adapters.conformance.grade import Grade, Outcome
from adapters.conformance.runner import Suite, peers_installed
from adapters.conformance.target import Target
from adapters.contract import Adapter, Sample

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy


class AdapterConformance:
    """Base class: set :attr:`adapter`; optionally the other class attributes."""

    #: The adapter under test: its entry-point name (it must be installed) or its class.
    adapter: ClassVar[str | type[Adapter]]
    #: The name the reports use; default: the entry-point name, or the adapter's kind.
    name: ClassVar[str | None] = None
    #: Offline config and addresses; default: the adapter's own ``sample()``.
    sample: ClassVar[Sample | None] = None
    #: Extra vector folders (same layout as ``canonical/vectors``).
    vectors: ClassVar[Sequence[Path]] = ()
    #: Peer adapters (entry-point names) for cross-protocol cases; None = every installed
    #: adapter that loads; () = none.
    peers: ClassVar[Sequence[str] | None] = None
    #: Override the example count of the property cases (laws on generated examples).
    examples: ClassVar[int | None] = None
    #: Run the property cases at all.
    properties: ClassVar[bool] = True

    _suites: ClassVar[dict[type[AdapterConformance], Suite]] = {}

    @classmethod
    def native_strategy(cls) -> SearchStrategy[bytes] | None:
        """A hypothesis strategy of wire messages of the adapter (for the L2 property).

        Override to let the suite generate native messages the way your network writes
        them; without one, natives are derived from generated text messages.
        """
        return None

    @classmethod
    def conformance_target(cls) -> Target:
        """The adapter under test as a :class:`~adapters.conformance.target.Target`."""
        chosen = cls.adapter
        if isinstance(chosen, str):
            if cls.sample is None and cls.name is None:
                return Target.installed(chosen)
            from adapters.contract import load  # noqa: PLC0415

            return Target.from_adapter(load(chosen), name=cls.name or chosen, sample=cls.sample)
        return Target.from_adapter(chosen, name=cls.name, sample=cls.sample)

    @classmethod
    def conformance_suite(cls) -> Suite:
        """The suite of this class (built once: collection and the tests share it)."""
        if cls not in AdapterConformance._suites:
            target = cls.conformance_target()
            peers, notes = peers_installed(
                target.name, None if cls.peers is None else list(cls.peers)
            )
            suite = Suite.collect(
                target,
                folders=[Path(p) for p in cls.vectors],
                peers=peers,
                properties=cls.properties,
                examples=cls.examples,
                natives=cls.native_strategy(),
            )
            suite.notes.extend(notes)
            AdapterConformance._suites[cls] = suite
        return AdapterConformance._suites[cls]

    def test_conformance_case(self, conformance_case: Case, conformance_record: Any) -> None:
        """One conformance case: FAIL fails, UNSUPPORTED skips (reported), the rest pass."""
        import pytest  # noqa: PLC0415 - the class is only used under pytest

        suite = type(self).conformance_suite()
        outcome: Outcome = suite.run_one(conformance_case)
        conformance_record(suite, conformance_case, outcome)
        if outcome.grade is Grade.FAIL:
            pytest.fail(
                f"{conformance_case.id} ({conformance_case.section}): {outcome.detail}",
                pytrace=False,
            )
        if outcome.grade is Grade.UNSUPPORTED:
            missing = suite.target.missing(conformance_case.capabilities)
            if conformance_case.peer and conformance_case.peer in suite.peers:
                missing |= suite.peers[conformance_case.peer].missing(conformance_case.capabilities)
            needs = ", ".join(sorted(c.value for c in missing)) or "a capability"
            pytest.skip(
                f"UNSUPPORTED: {suite.target.name} lacks {needs} (loss recorded or refused)"
            )
