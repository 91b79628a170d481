"""Parsing and mapping policy: strictness, profiles, size limits, which losses are fatal.

Modelled on the stdlib ``email`` package's policy object (``email/_policybase.py``): one
frozen value passed down instead of many keyword arguments, and ``replace()`` to derive
a variant. DESIGN.md rule 3: parsing records defects and mapping records losses; the
policy decides which of them are fatal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Profile = Literal["msrp"]

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class Policy:
    """How strictly to read, and how much to accept.

    - ``strict``: reject every grammar violation (RFC 3862 §3.6, with the documented NS
      exception); otherwise only structural faults are fatal and the rest are recorded
      as defects (the relaying default).
    - ``profile``: ``"msrp"`` adds RFC 4975 §13 rules (From and To required; only NS, To
      and cc may repeat).
    - ``max_line_length``: longest header line accepted in any mode (RFC 3862 §2.2 says
      processors SHOULD NOT limit line length, so this is a policy, not grammar).
    - ``max_message_size``: largest object accepted from the network.
    - ``max_headers``: most header lines in one block (header floods).
    - ``max_xml_depth`` / ``max_xml_elements`` / ``max_xml_attributes``: bounds for the XML
      cpimgw parses itself (PIDF, isComposing, IMDN).
    - ``max_xml_token``: longest single XML markup token (a start tag with its attributes, a
      comment); the parser holds a whole token in memory before it can look inside it.
    - ``fatal_losses``: mapping losses (by ``Loss.field``) that turn into errors.
    """

    strict: bool = False
    profile: Profile | None = None
    max_line_length: int = 64 * KIB
    max_message_size: int = 1 * MIB
    max_headers: int = 1000
    max_xml_depth: int = 32
    max_xml_elements: int = 10_000
    max_xml_attributes: int = 64
    max_xml_token: int = 64 * KIB
    fatal_losses: frozenset[str] = field(default_factory=frozenset)

    def replace(self, **changes: object) -> Policy:
        """Return a copy with ``changes`` applied (the policy itself never changes)."""
        return replace(self, **changes)  # type: ignore[arg-type]


#: The relaying default: lenient, 64 KiB header lines, 1 MiB objects.
DEFAULT = Policy()
#: Strict RFC 3862 checking, as ``cpimgw cpim check --strict`` uses.
STRICT = Policy(strict=True)


def resolve(policy: Policy | None, *, strict: bool | None, profile: Profile | None) -> Policy:
    """Combine an explicit policy with the ``strict=``/``profile=`` keywords of the parsers.

    Keywords given explicitly win over the policy's own settings.
    """
    base = policy if policy is not None else DEFAULT
    changes: dict[str, object] = {}
    if strict is not None and strict != base.strict:
        changes["strict"] = strict
    if profile is not None and profile != base.profile:
        changes["profile"] = profile
    return base.replace(**changes) if changes else base
