"""The checks: one journey per kind of case, each ending in a :class:`Finding` that
:func:`judge` turns into a graded :class:`~adapters.conformance.grade.Outcome`.

A finding says what happened, independent of capabilities: ``exact`` (the expectation
holds), ``lossy`` (it does not, but losses were recorded), ``silent`` (it does not and
nothing was recorded: DESIGN.md rule 3 forbids that), ``refused`` (a clear error) or
``crashed`` (any other exception). The grade then depends on whether the adapter declares
every capability the case needs.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from adapters.conformance.case import Case, Check, Expect
from adapters.conformance.folder import cpim_features
from adapters.conformance.grade import (
    Difference,
    Grade,
    Outcome,
    compare_bytes,
    compare_field,
)
from adapters.conformance.journey import (
    Crashed,
    Journey,
    Refused,
    envelope_from,
    envelope_into,
)
from adapters.conformance.signature import Verdict, verdict
from adapters.conformance.target import Target
from adapters.contract import Capability, ErrorMapper
from canonical.envelope import CPIM, PIDF, Operation, Payload
from canonical.errors import GatewayError, Loss, Reason

Status = Literal["exact", "lossy", "silent", "refused", "crashed"]


@dataclass(frozen=True, slots=True)
class Finding:
    """What a journey found, before grading."""

    status: Status
    detail: str
    losses: tuple[Loss, ...] = ()
    steps: tuple[str, ...] = ()
    difference: Difference | None = None
    defects: tuple[str, ...] = ()


@dataclass(slots=True)
class Bench:
    """What every check may need besides the case: the clock for signature checks, the
    other adapters for cross-protocol cases, and a cache of derived inputs."""

    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    peers: dict[str, Target] = field(default_factory=dict)
    cache: dict[tuple[str, str], Any] = field(default_factory=dict)


def describe_losses(losses: tuple[Loss, ...]) -> str:
    return "; ".join(f"{loss.field}: {loss.detail}" for loss in losses)


def _differs(journey: Journey, where: str, difference: Difference, extra: str = "") -> Finding:
    losses = tuple(journey.losses)
    status: Status = "lossy" if losses else "silent"
    text = difference.describe() + (f" ({extra})" if extra else "")
    return Finding(status, text, losses, tuple(journey.steps), difference)


def _exact(journey: Journey, detail: str, defects: tuple[str, ...] = ()) -> Finding:
    return Finding("exact", detail, tuple(journey.losses), tuple(journey.steps), None, defects)


def compare_payloads(
    journey: Journey, where: str, expected: Payload | None, actual: Payload | None
) -> Finding | None:
    """None when ``actual`` is byte-identical to ``expected`` (type and body)."""
    if expected is None and actual is None:
        return None
    if expected is None or actual is None:
        diff = compare_field(where, expected, actual)
        assert diff is not None
        return _differs(journey, where, diff)
    if expected.content_type != actual.content_type:
        diff = compare_field(f"{where}: content type", expected.content_type, actual.content_type)
        assert diff is not None
        return _differs(journey, where, diff)
    diff = compare_bytes(where, expected.body, actual.body)
    return None if diff is None else _differs(journey, where, diff)


def _verdict_difference(
    journey: Journey, where: str, before: Verdict, after: Verdict
) -> Finding | None:
    if after.disagreement:
        return Finding(
            "crashed",
            f"{where}: the verifiers disagree ({after.describe()})",
            tuple(journey.losses),
            tuple(journey.steps),
        )
    if before.valid == after.valid:
        return None
    diff = compare_field(f"{where}: signature", before.describe(), after.describe())
    assert diff is not None
    return _differs(journey, where, diff)


# --- the checks ---------------------------------------------------------------------


def check_canonical(case: Case, target: Target, bench: Bench) -> Finding:
    """L1: the payload crosses the adapter's native wire format byte for byte."""
    payload = Payload(case.input.content_type or "message/cpim", case.input.data)
    journey = Journey.start()
    native, _ = journey.out(target, envelope_into(target, payload))
    back = journey.into(target, native)
    found = compare_payloads(journey, "payload after the trip", payload, back.payload)
    return found or _exact(journey, "identical payload after the trip")


def check_signed(case: Case, target: Target, bench: Bench) -> Finding:
    """L1 + L3: identical bytes, and the signature verdict unchanged after the trip."""
    payload = Payload(case.input.content_type or "multipart/signed", case.input.data)
    before = verdict(payload, case.trust, now=bench.now)
    if before.disagreement:
        return Finding("crashed", f"on entry the verifiers disagree: {before.describe()}")
    if case.expect is Expect.VERIFIES and not before.valid:
        return Finding("crashed", f"the case's own object does not verify: {before.describe()}")
    journey = Journey.start()
    native, _ = journey.out(target, envelope_into(target, payload))
    back = journey.into(target, native)
    after = verdict(back.payload, case.trust, now=bench.now)
    found = _verdict_difference(journey, "payload after the trip", before, after)
    found = found or compare_payloads(journey, "payload after the trip", payload, back.payload)
    return found or _exact(journey, f"identical payload; signature {after.describe()} as on entry")


def check_native(case: Case, target: Target, bench: Bench) -> Finding:
    """L2: wire -> native -> envelope -> native, equal under the protocol's equality."""
    journey = Journey.start()
    native = journey.decode(target, case.input.data)
    envelope = journey.into(target, native)
    notes = []
    if case.expect is Expect.VERIFIES:
        after = verdict(envelope.payload, case.trust, now=bench.now)
        found = _verdict_difference(journey, "payload", Verdict(True), after)
        if found is not None:
            return found
        notes.append(f"payload {after.describe()}")
    again, wire = journey.out(target, envelope)
    if journey.equal(target, again, native):
        same = "same bytes" if wire == case.input.data else "equal, bytes differ"
        return _exact(journey, "; ".join(["native equal after the trip", same, *notes]))
    diff = compare_bytes("native after the trip", case.input.data, wire)
    if diff is None:
        diff = Difference("native after the trip (equal bytes, unequal objects)", b"", b"")
    return _differs(journey, "native", diff, "not equal under the protocol's equality")


def _pidf_fields(data: bytes, policy: Any) -> list[tuple[str, object]]:
    from canonical.presence import parse_pidf  # noqa: PLC0415 - presence cases only

    doc = parse_pidf(data, policy=policy)
    fields: list[tuple[str, object]] = [
        ("entity", doc.entity),
        ("basic", doc.basic),
        ("notes", tuple((n.text, n.lang) for n in doc.notes)),
        ("activities", tuple(doc.activities)),
        ("tuples", len(doc.tuples)),
    ]
    names = ("id", "basic", "contact", "priority", "timestamp", "show")
    for index, item in enumerate(doc.tuples):
        fields.extend((f"tuple[{index}].{name}", getattr(item, name)) for name in names)
        fields.append((f"tuple[{index}].notes", tuple((n.text, n.lang) for n in item.notes)))
    return fields


def _same_entity(a: str, b: str) -> bool:
    """The same presentity under another URI scheme (RFC 3922 §5.1 uses ``im:`` and
    ``pres:`` for one entity; RFC 7247 §6 maps schemes): user@host compared."""
    return a.partition(":")[2].lower() == b.partition(":")[2].lower()


def _elements(data: bytes, policy: Any) -> Counter[str]:
    from canonical.xmldoc import parse_xml  # noqa: PLC0415 - presence cases only

    return Counter(element.tag for element in parse_xml(data, policy=policy).iter())


def check_presence(case: Case, target: Target, bench: Bench) -> Finding:
    """A NOTIFY's PIDF keeps its bytes, or every modelled field, with losses recorded for
    anything else (RFC 3863 §4; RFC 3922 §5; RFC 8048 §6). The NOTIFY comes from the
    document's own entity, as a presentity's notification does."""
    payload = Payload(case.input.content_type or PIDF, case.input.data)
    try:
        expected = _pidf_fields(payload.body, target.policy)
    except GatewayError as exc:
        return Finding("crashed", f"the case's own PIDF is unreadable: {exc}")
    journey = Journey.start()
    entity = str(dict(expected)["entity"])
    envelope = envelope_into(
        target,
        payload,
        operation=Operation.NOTIFY,
        attributes={"subscription.state": case.input.fields.get("subscription.state", "active")},
        sender=entity or None,
    )
    native, _ = journey.out(target, envelope)
    back = journey.into(target, native)
    if compare_payloads(journey, "PIDF", payload, back.payload) is None:
        return _exact(journey, "identical PIDF after the trip")
    if back.operation is not Operation.NOTIFY:
        diff = compare_field("operation", Operation.NOTIFY.value, back.operation.value)
        assert diff is not None
        return _differs(journey, "operation", diff)
    if back.payload is None:
        diff = compare_field("PIDF", "a document", None)
        assert diff is not None
        return _differs(journey, "PIDF", diff)
    try:
        actual = dict(_pidf_fields(back.payload.body, target.policy))
        missing = _elements(payload.body, target.policy) - _elements(
            back.payload.body, target.policy
        )
    except (GatewayError, ValueError) as exc:
        return Finding(
            "crashed",
            f"the PIDF after the trip is unreadable: {exc}",
            tuple(journey.losses),
            tuple(journey.steps),
        )
    for name, value in expected:
        got = actual.get(name)
        if name == "entity" and _same_entity(str(value), str(got)):
            continue
        diff = compare_field(f"PIDF field {name}", value, got)
        if diff is not None:
            return _differs(journey, name, diff)
    if missing:
        names = ", ".join(sorted(missing))
        diff = Difference("PIDF elements", names.encode("utf-8"), b"")
        return _differs(journey, "elements", diff, "elements dropped")
    return _exact(journey, "PIDF rebuilt; every modelled field and element kept")


def _optional_int(text: str | None) -> int | None:
    return None if text in (None, "", "none") else int(str(text))


def _optional_bool(text: str | None) -> bool | None:
    return None if text in (None, "", "none") else str(text).lower() == "true"


def check_subscription(case: Case, target: Target, bench: Bench) -> Finding:
    """SUBSCRIBE / UNSUBSCRIBE / AUTHORIZE keep operation, duration and answer
    (RFC 3859 §3; RFC 3922 §6; RFC 8048 §5)."""
    fields = case.input.fields
    attributes = {
        k.removeprefix("attribute."): v for k, v in fields.items() if k.startswith("attribute.")
    }
    envelope = envelope_into(
        target,
        None,
        operation=Operation(fields["operation"]),
        duration=_optional_int(fields.get("duration")),
        granted=_optional_bool(fields.get("granted")),
        attributes=attributes,
    )
    journey = Journey.start()
    native, _ = journey.out(target, envelope)
    back = journey.into(target, native)
    compared: list[tuple[str, object, object]] = [
        ("operation", envelope.operation.value, back.operation.value),
        ("duration", envelope.duration, back.duration),
        ("granted", envelope.granted, back.granted),
    ]
    compared += [(f"attribute {k}", v, back.attributes.get(k)) for k, v in attributes.items()]
    for name, want, got in compared:
        diff = compare_field(name, want, got)
        if diff is not None:
            return _differs(journey, name, diff)
    return _exact(journey, "operation, duration and answer kept")


def check_error(case: Case, target: Target, bench: Bench) -> Finding:
    """A failure reported in the adapter's protocol reads back as the same failure
    (RFC 3860 §3.4.1; RFC 7247 §7)."""
    mapper = target.mapper
    if not isinstance(mapper, ErrorMapper):
        declared = Capability.ERRORS in target.capabilities
        return Finding(
            "crashed" if declared else "refused",
            ("declares 'errors' but " if declared else "")
            + "the mapper has no error_to_native/error_from_native (adapters.contract.ErrorMapper)",
        )
    reason = Reason(case.input.fields["reason"])
    text = case.input.fields.get("text", f"conformance failure {reason.value}")
    error = GatewayError(text, reason=reason)
    original = Payload("message/cpim", b"From: <im:charles@example.net>\r\n\r\n")
    journey = Journey.start()
    step = f"{target.name}.error_to_native"
    native = journey.call(step, mapper.error_to_native, envelope_from(target, original), error)
    wire = journey.encode(target, native)
    decoded = journey.decode(target, wire)
    back = journey.call(f"{target.name}.error_from_native", mapper.error_from_native, decoded)
    if back is None:
        diff = compare_field("failure", reason.value, None)
        assert diff is not None
        return Finding(
            "silent",
            "the native failure does not read back as a failure",
            tuple(journey.losses),
            tuple(journey.steps),
            diff,
        )
    if not isinstance(back, GatewayError):
        return Finding("crashed", f"error_from_native returned {type(back).__name__}")
    defects = () if text in str(back) else (f"text not carried (read back: {str(back)!r})",)
    if back.reason is not reason:
        diff = compare_field("reason", reason.value, back.reason.value)
        assert diff is not None
        journey.losses.append(Loss("reason", f"{reason.value} reads back as {back.reason.value}"))
        return Finding(
            "lossy",
            f"reason {reason.value} reads back as {back.reason.value}",
            tuple(journey.losses),
            tuple(journey.steps),
            diff,
            defects,
        )
    return _exact(journey, f"reads back as {reason.value}", defects)


def check_malformed_canonical(case: Case, target: Target, bench: Bench) -> Finding:
    """A malformed CPIM object: refused with a clear error, or relayed untouched."""
    payload = Payload(case.input.content_type or "message/cpim", case.input.data)
    journey = Journey.start()
    native, _ = journey.out(target, envelope_into(target, payload))
    back = journey.into(target, native)
    found = compare_payloads(journey, "payload after the trip", payload, back.payload)
    return found or _exact(journey, "relayed untouched", ("accepted a malformed object",))


def sample_wire(target: Target, bench: Bench) -> bytes:
    """A valid wire message of ``target``: a short text message mapped into its network."""
    key = ("sample-wire", target.name)
    if key not in bench.cache:
        body = (
            b"From: <im:ada@example.com>\r\nTo: <im:charles@example.net>\r\n\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\nHello from the kit"
        )
        try:
            mapped = target.mapper.from_canonical(
                envelope_into(target, Payload("message/cpim", body))
            )
            bench.cache[key] = target.mapper.encode(mapped.value)
        except Exception:  # noqa: BLE001 - no sample: derived cases use fixed inputs
            bench.cache[key] = b""
    value = bench.cache[key]
    assert isinstance(value, bytes)
    return value


_DERIVATIONS: dict[str, Callable[[bytes], bytes]] = {
    "truncate-half": lambda wire: wire[: len(wire) // 2],
    "truncate-last-byte": lambda wire: wire[:-1],
    "first-byte": lambda wire: wire[:1],
    "doubled": lambda wire: wire + wire,
    "lf-only": lambda wire: wire.replace(b"\r\n", b"\n"),
    "nul-inside": lambda wire: wire[: len(wire) // 3] + b"\x00" + wire[len(wire) // 3 :],
    "high-bytes": lambda wire: bytes(b | 0x80 for b in wire),
}


def malformed_input(case: Case, target: Target, bench: Bench) -> bytes:
    """The case's bytes, or the bytes derived from the target's sample wire message."""
    derive = case.input.fields.get("derive")
    if derive is None:
        repeat = int(case.input.fields.get("repeat", "1"))
        return case.input.data * repeat
    if derive not in _DERIVATIONS:
        raise ValueError(f"unknown derivation {derive!r} (known: {', '.join(_DERIVATIONS)})")
    return _DERIVATIONS[derive](sample_wire(target, bench))


def check_malformed_native(case: Case, target: Target, bench: Bench) -> Finding:
    """Broken wire input: a clear error (ParseError) or an acceptance, never a crash."""
    data = malformed_input(case, target, bench)
    journey = Journey.start()
    native = journey.decode(target, data)
    envelope = journey.into(target, native)
    return _exact(journey, f"accepted as a {envelope.operation.value}")


def check_cross(case: Case, target: Target, bench: Bench) -> Finding:
    """A -> canonical -> B -> canonical -> A: the payload is byte-identical after every
    hop (signatures keep their verdict), and A's final native equals the first one.

    Transport facts (addresses, identity, hop budget) are per hop: the kit re-addresses
    the envelope for B as the core's routing would, and restores the first hop's facts
    on the way back, so only the payload crosses B.
    """
    if case.peer is None or case.peer not in bench.peers:
        return Finding("crashed", f"peer adapter {case.peer!r} is not available")
    peer = bench.peers[case.peer]
    journey = Journey.start()
    if case.input.form == "native":
        reference = journey.decode(target, case.input.data)
        first = journey.into(target, reference)
        start = first.payload
        origin = first
    else:
        start = Payload(case.input.content_type or "message/cpim", case.input.data)
        origin = envelope_into(target, start)
        reference, _ = journey.out(target, origin)
        first = journey.into(target, reference)
        found = compare_payloads(journey, f"payload after {target.name}", start, first.payload)
        if found is not None:
            return found
    signed = start is not None and start.is_signed and bool(case.trust)
    before = verdict(start, case.trust, now=bench.now) if signed else None
    if before is not None and case.input.form == "payload":
        after_first = verdict(first.payload, case.trust, now=bench.now)
        found = _verdict_difference(journey, f"payload after {target.name}", before, after_first)
        if found is not None:
            return found
    onward = first.replace(sender=first.sender, recipient=peer.local)
    native_b, _ = journey.out(peer, onward)
    second = journey.into(peer, native_b)
    found = compare_payloads(journey, f"payload after {peer.name}", start, second.payload)
    if found is not None:
        return found
    if before is not None:
        after = verdict(second.payload, case.trust, now=bench.now)
        found = _verdict_difference(journey, f"payload after {peer.name}", before, after)
        if found is not None:
            return found
    homeward = origin.replace(payload=second.payload)
    final, wire = journey.out(target, homeward)
    expected_wire = journey.encode(target, reference)
    if not journey.equal(target, final, reference):
        diff = compare_bytes(f"{target.name} native after the round", expected_wire, wire)
        if diff is None:
            diff = Difference("native (equal bytes, unequal objects)", b"", b"")
        return _differs(journey, "native", diff, "not equal under the protocol's equality")
    same = "same bytes" if wire == expected_wire else "equal, wire bytes differ"
    note = "; signature verdict unchanged at every hop" if before is not None else ""
    return _exact(journey, f"identical payload at every hop; final native {same}{note}")


CHECKS: dict[Check, Callable[[Case, Target, Bench], Finding]] = {
    Check.CANONICAL: check_canonical,
    Check.SIGNED: check_signed,
    Check.NATIVE: check_native,
    Check.PRESENCE: check_presence,
    Check.SUBSCRIPTION: check_subscription,
    Check.ERROR: check_error,
    Check.MALFORMED_CANONICAL: check_malformed_canonical,
    Check.MALFORMED_NATIVE: check_malformed_native,
    Check.CROSS: check_cross,
}


def explore(case: Case, target: Target, bench: Bench) -> Finding:
    """Run the case's check; refusals and crashes of any step become findings."""
    try:
        return CHECKS[case.check](case, target, bench)
    except Refused as refused:
        return Finding("refused", str(refused.error), steps=(refused.step,))
    except Crashed as crashed:
        return Finding("crashed", str(crashed), steps=(crashed.step,))


# --- grading ------------------------------------------------------------------------

#: Checks whose law allows recorded losses (L2, presence, subscriptions, failures).
LOSSY_ALLOWED = {Check.NATIVE, Check.PRESENCE, Check.SUBSCRIPTION, Check.ERROR}


def _outcome(grade: Grade, detail: str, finding: Finding) -> Outcome:
    return Outcome(
        grade, detail, finding.losses, finding.defects, finding.difference, finding.steps
    )


def judge(case: Case, finding: Finding, missing: frozenset[Capability]) -> Outcome:
    """The grade of a finding for a case, given the capabilities the adapter lacks."""
    losses = describe_losses(finding.losses)
    if finding.status == "crashed":
        return _outcome(Grade.FAIL, finding.detail, finding)
    if case.check in {Check.MALFORMED_CANONICAL, Check.MALFORMED_NATIVE}:
        return _judge_malformed(case, finding, missing)
    if finding.status == "refused" and not finding.detail.strip():
        return _outcome(Grade.FAIL, "refused with an empty error message", finding)
    if missing:
        needs = ", ".join(sorted(c.value for c in missing))
        if finding.status == "silent":
            return _outcome(
                Grade.FAIL,
                f"needs {needs} (not declared) and loses it silently: {finding.detail}",
                finding,
            )
        said = {
            "exact": "carried anyway",
            "lossy": f"losses recorded: {losses}",
            "refused": f"refused clearly: {finding.detail}",
        }[finding.status]
        return _outcome(Grade.UNSUPPORTED, f"needs {needs} (not declared); {said}", finding)
    if finding.status == "exact":
        if finding.losses or finding.defects:
            noted = "; ".join(filter(None, [losses, *finding.defects]))
            return _outcome(Grade.NON_STRICT, f"{finding.detail}; recorded: {noted}", finding)
        return _outcome(Grade.PASS, finding.detail, finding)
    if finding.status == "lossy" and case.check in LOSSY_ALLOWED:
        return _outcome(Grade.NON_STRICT, f"{finding.detail}; losses: {losses}", finding)
    if finding.status == "lossy":
        return _outcome(
            Grade.FAIL, f"{finding.detail}; the law allows no loss here ({losses})", finding
        )
    if finding.status == "refused":
        return _outcome(Grade.FAIL, f"refused a supported case: {finding.detail}", finding)
    return _outcome(Grade.FAIL, f"silent loss: {finding.detail}", finding)


def _judge_malformed(case: Case, finding: Finding, missing: frozenset[Capability]) -> Outcome:
    if missing:
        needs = ", ".join(sorted(c.value for c in missing))
        return _outcome(Grade.UNSUPPORTED, f"needs {needs} (not declared)", finding)
    if finding.status == "refused":
        if not finding.detail.strip():
            return _outcome(Grade.FAIL, "refused with an empty error message", finding)
        code = case.input.fields.get("expected_code")
        hint = f" (vector's code: {code})" if code else ""
        return _outcome(Grade.PASS, f"refused clearly: {finding.detail}{hint}", finding)
    if case.check is Check.MALFORMED_NATIVE:
        return _outcome(Grade.PASS, finding.detail, finding)
    if finding.status == "exact":
        return _outcome(Grade.NON_STRICT, "not refused; relayed untouched", finding)
    if finding.status == "lossy":
        losses = describe_losses(finding.losses)
        return _outcome(Grade.NON_STRICT, f"not refused; changed with losses: {losses}", finding)
    return _outcome(Grade.FAIL, f"malformed object altered silently: {finding.detail}", finding)


def payload_needs(payload: Payload | None) -> frozenset[Capability]:
    """The capabilities carrying ``payload`` exactly needs: what its CPIM object uses
    (RFC 3862 §3-4, :func:`~adapters.conformance.folder.cpim_features`), and signed or
    encrypted bodies (RFC 8551 §3.4-3.5, RFC 1847 §2.1)."""
    if payload is None:
        return frozenset()
    needs: set[Capability] = {Capability.MESSAGE}
    if payload.is_signed:
        needs.add(Capability.SIGNED_BODY)
    elif payload.is_encrypted:
        needs.add(Capability.ENCRYPTED_BODY)
    elif payload.content_type.split(";")[0].strip().lower() == CPIM:
        needs |= cpim_features(payload.body)
    return frozenset(needs)


def _native_needs(case: Case, target: Target) -> frozenset[Capability]:
    """For a journey that starts from a native message: what the payload the target
    makes of it needs. Empty when the target cannot map it (the check reports that)."""
    try:
        journey = Journey.start()
        return payload_needs(journey.into(target, journey.decode(target, case.input.data)).payload)
    except Exception:  # noqa: BLE001 - explore() runs the same steps and reports the failure
        return frozenset()


def run_case(case: Case, target: Target, bench: Bench) -> Outcome:
    """Run one (non-property) case against ``target`` and grade it.

    A cross-protocol journey that starts from a native message needs of the peer, besides
    the case's own capabilities, those of the payload the target makes of it: a peer that
    cannot carry that payload exactly is then UNSUPPORTED (its losses recorded), not a
    FAIL."""
    needed = case.capabilities
    missing = target.missing(needed)
    if case.check is Check.CROSS and case.peer in bench.peers:
        # the target made that payload itself; only the peer must be able to carry it
        onward = needed | _native_needs(case, target) if case.input.form == "native" else needed
        missing = missing | bench.peers[case.peer].missing(onward)
    return judge(case, explore(case, target, bench), missing)
