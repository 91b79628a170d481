"""The kit grades real journeys: a lossless mapper passes, each known fault is found,
named and graded as the issue defines (PASS, NON_STRICT, UNSUPPORTED, FAIL)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from adapters.conformance.case import Check
from adapters.conformance.grade import Grade
from adapters.conformance.report import Report
from adapters.conformance.runner import Suite
from adapters.conformance.target import Target
from adapters.contract import Capability
from tests.conformance import loopback as lb

WITHOUT_CPIM = lb.ALL - {Capability.CPIM_BODY, Capability.SIGNED_BODY}


def target(
    mapper: lb.LoopbackMapper, caps: Iterable[Capability] = lb.ALL, name: str = "t"
) -> Target:
    return Target(name=name, kind="loopback", mapper=mapper, capabilities=frozenset(caps))


def run(
    mapper: lb.LoopbackMapper, caps: Iterable[Capability] = lb.ALL, **options: object
) -> Report:
    options.setdefault("examples", 15)
    return Suite.collect(target(mapper, caps), **options).run()  # type: ignore[arg-type]


def grades(report: Report) -> dict[str, Grade]:
    return {r.case.id: r.outcome.grade for r in report.results}


def result(report: Report, case_id: str):  # type: ignore[no-untyped-def]
    return next(r for r in report.results if r.case.id == case_id)


@pytest.fixture(scope="module")
def lossless() -> Report:
    peer = target(lb.LoopbackMapper(), name="peer")
    return Suite.collect(target(lb.LoopbackMapper()), peers=[peer], examples=15).run()


def test_lossless_mapper_has_no_failure(lossless: Report) -> None:
    assert not lossless.failures(), [(r.case.id, r.outcome.detail) for r in lossless.failures()]


def test_every_valid_vector_passes_l1_on_a_lossless_mapper(lossless: Report) -> None:
    canonical = [r for r in lossless.results if r.case.check is Check.CANONICAL]
    assert len(canonical) >= 25
    assert {r.outcome.grade for r in canonical} == {Grade.PASS}


def test_suite_contains_every_kind_of_case(lossless: Report) -> None:
    checks = {r.case.check for r in lossless.results}
    assert checks == set(Check) - {Check.NATIVE}  # no native vectors of kind "loopback"
    assert any(r.case.id == "law/L3/generated-signed" for r in lossless.results)


def test_malformed_vector_relayed_untouched_is_non_strict(lossless: Report) -> None:
    outcome = result(lossless, "vector/cpim/i001-bare-lf").outcome
    assert outcome.grade is Grade.NON_STRICT
    assert "relayed untouched" in outcome.detail


def test_signed_vectors_keep_their_verdict(lossless: Report) -> None:
    valid = result(lossless, "vector/signed/s01-multipart-signed").outcome
    tampered = result(lossless, "vector/signed/s03-tampered-reordered").outcome
    assert valid.grade is Grade.PASS
    assert "verifies" in valid.detail
    assert tampered.grade is Grade.PASS
    assert "does not verify" in tampered.detail


def test_cross_cases_travel_through_the_peer(lossless: Report) -> None:
    cross = [r for r in lossless.results if r.case.check is Check.CROSS]
    assert cross
    assert all(r.case.peer == "peer" for r in cross)
    assert (
        "peer.from_canonical"
        in result(lossless, "cross/peer/vector/cpim/001-minimal").outcome.steps
    )


def test_silent_crlf_loss_fails_at_the_first_differing_byte() -> None:
    report = run(lb.SilentCrlfLoss())
    outcome = result(report, "vector/cpim/001-minimal").outcome
    assert outcome.grade is Grade.FAIL
    assert "silent loss" in outcome.detail
    diff = outcome.difference
    assert diff is not None
    assert diff.offset == diff.expected.index(b"\r\n")


def test_recorded_loss_for_an_undeclared_capability_is_unsupported_not_failed() -> None:
    report = run(lb.RecordedCrlfLoss(), WITHOUT_CPIM)
    outcome = result(report, "vector/cpim/002-all-standard-headers").outcome
    assert outcome.grade is Grade.UNSUPPORTED
    assert "cpim-body" in outcome.detail
    assert "line ends sent as LF" in outcome.detail


def test_recorded_loss_breaks_l1_when_the_capability_is_declared() -> None:
    report = run(lb.RecordedCrlfLoss(), lb.ALL)
    outcome = result(report, "vector/cpim/001-minimal").outcome
    assert outcome.grade is Grade.FAIL
    assert "allows no loss" in outcome.detail


def test_silent_loss_fails_even_for_an_undeclared_capability() -> None:
    report = run(lb.SilentCrlfLoss(), WITHOUT_CPIM)
    outcome = result(report, "vector/cpim/001-minimal").outcome
    assert outcome.grade is Grade.FAIL
    assert "loses it silently" in outcome.detail


def test_reordered_headers_fail_and_name_the_offset() -> None:
    report = run(lb.HeaderSorter())
    outcome = result(report, "vector/cpim/020-header-order-b").outcome
    assert outcome.grade is Grade.FAIL
    assert outcome.difference is not None
    assert outcome.difference.offset is not None


def test_crash_on_short_native_input_fails_with_the_exception_and_line() -> None:
    report = run(lb.Crasher())
    outcome = result(report, "malformed-native/empty").outcome
    assert outcome.grade is Grade.FAIL
    assert "IndexError" in outcome.detail
    assert "loopback.py" in outcome.detail
    assert result(report, "malformed-native/noise").outcome.grade is Grade.PASS


def test_clear_parse_error_on_bad_native_input_passes(lossless: Report) -> None:
    outcome = result(lossless, "malformed-native/invalid-utf8").outcome
    assert outcome.grade is Grade.PASS
    assert "refused clearly" in outcome.detail


def test_recased_mime_header_breaks_the_signature_and_fails() -> None:
    report = run(lb.Recaser())
    outcome = result(report, "vector/signed/s01-multipart-signed").outcome
    assert outcome.grade is Grade.FAIL
    assert "signature" in outcome.detail
    cross = result(report, "law/L3/generated-signed").outcome
    assert cross.grade is Grade.FAIL


def test_property_finds_a_fault_no_vector_has_and_shrinks_it() -> None:
    suite = Suite.collect(target(lb.TabEater()), examples=200)
    vectors = [c for c in suite.cases if c.id.startswith("vector/cpim/0")]
    assert all(suite.run_one(c).grade is Grade.PASS for c in vectors)
    law = next(c for c in suite.cases if c.id == "law/L1/generated-cpim")
    outcome = suite.run_one(law)
    assert outcome.grade is Grade.FAIL
    assert "minimal example" in outcome.detail
    assert "\\t" in outcome.detail


def test_many_to_one_error_table_is_non_strict() -> None:
    report = run(lb.ReasonFlattener())
    outcome = result(report, "error/loop").outcome
    assert outcome.grade is Grade.NON_STRICT
    assert "loop reads back as internal" in outcome.detail
    assert result(report, "error/internal").outcome.grade is Grade.PASS


def test_error_cases_are_unsupported_without_the_errors_capability() -> None:
    report = run(lb.LoopbackMapper(), lb.ALL - {Capability.ERRORS})
    assert result(report, "error/forbidden").outcome.grade is Grade.UNSUPPORTED


def test_cross_case_names_the_hop_that_lost_bytes() -> None:
    suite = Suite.collect(
        target(lb.LoopbackMapper()),
        peers=[target(lb.SilentCrlfLoss(), name="lossy")],
        properties=False,
    )
    report = suite.run()
    outcome = result(report, "cross/lossy/vector/cpim/001-minimal").outcome
    assert outcome.grade is Grade.FAIL
    assert outcome.difference is not None
    assert "after lossy" in outcome.difference.where


def test_properties_can_be_left_out() -> None:
    suite = Suite.collect(target(lb.LoopbackMapper()), properties=False)
    assert not [c for c in suite.cases if c.check is Check.PROPERTY]


class _NoErrors:
    """A mapper without the ErrorMapper methods (wraps the lossless one)."""

    def __init__(self) -> None:
        inner = lb.LoopbackMapper()
        self.to_canonical = inner.to_canonical
        self.from_canonical = inner.from_canonical
        self.encode = inner.encode
        self.decode = inner.decode
        self.equal = inner.equal


def test_declaring_errors_without_an_error_mapper_fails() -> None:
    suite = Suite.collect(target(_NoErrors()), properties=False)  # type: ignore[arg-type]
    case = next(c for c in suite.cases if c.id == "error/loop")
    outcome = suite.run_one(case)
    assert outcome.grade is Grade.FAIL
    assert "declares 'errors'" in outcome.detail
    unsupported = Suite.collect(
        target(_NoErrors(), lb.ALL - {Capability.ERRORS}),
        properties=False,  # type: ignore[arg-type]
    )
    assert unsupported.run_one(case).grade is Grade.UNSUPPORTED
