"""``encode_parties`` and ``encode_entity_headers`` write the bytes ``build`` writes.

The SIP and XMPP mappers write their common objects directly from these two functions
(RFC 3862 §4.1-4.2 parties, §2/§3.1 the encapsulated entity's headers), so each must agree
with :func:`canonical.cpim.build` byte for byte, and refuse only where build refuses or
may refuse.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canonical import cpim

uris = st.one_of(
    st.sampled_from(
        [
            "sip:bob@sip.test",
            "im:alice@xmpp.test",
            "tel:+123",
            "sip:b%20b@h",
            "im:d'artagnan@x",
            "sip:a>b@c",
            "not a uri",
            "",
            "im:é@x",
        ]
    ),
    st.from_regex(r"[a-z][a-z0-9+.\-]{0,5}:[A-Za-z0-9@%.;=<> \-]{0,12}", fullmatch=True),
)
names = st.one_of(st.none(), st.sampled_from(["Ada", "Ada Lovelace", 'Ada "A"', "é x"]))
parties = st.one_of(uris, st.builds(cpim.Party, names, uris))
texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from("\udc80 "),
    max_size=20,
)
entity_names = st.one_of(
    st.sampled_from(["Content-Language", "Content-ID", "Content-Disposition"]),
    st.text(alphabet="Content-Xé: ", min_size=0, max_size=10),
)


def _header_lines(sender: cpim.Party | str, to: list[cpim.Party | str]) -> bytes | None:
    try:
        built = cpim.build(sender=sender, to=to, content_type="text/plain", body=b"")
    except ValueError:
        return None
    return b"".join(header.raw for header in built.headers)


@given(parties, st.lists(parties, min_size=0, max_size=3))
def test_party_lines_are_the_from_and_to_lines_build_writes(
    sender: cpim.Party | str, to: list[cpim.Party | str]
) -> None:
    expected = _header_lines(sender, to)
    for _ in range(2):  # the second call answers from memory
        assert cpim.encode_parties(sender, to, refused="none") == expected
    if expected is None:
        with pytest.raises(ValueError):
            cpim.encode_parties(sender, to)
    else:
        assert cpim.encode_parties(sender, tuple(to)) == expected


def test_a_string_party_and_a_nameless_party_give_the_same_lines() -> None:
    assert cpim.encode_parties("im:a@x", ["sip:b@y"]) == cpim.encode_parties(
        cpim.Party(None, "im:a@x"), (cpim.Party(None, "sip:b@y"),)
    )
    assert cpim.encode_parties("im:a@x", ["sip:b@y"]) == b"From: <im:a@x>\r\nTo: <sip:b@y>\r\n"


def test_remembered_party_lines_stay_bounded() -> None:
    for i in range(cpim.PARTIES_REMEMBERED + 10):
        lines = cpim.encode_parties(f"im:u{i}@x", ("im:b@y",))
        assert lines == f"From: <im:u{i}@x>\r\nTo: <im:b@y>\r\n".encode()
    assert len(cpim._PARTY_LINES) <= cpim.PARTIES_REMEMBERED


@given(
    st.one_of(st.sampled_from(["text/plain; charset=utf-8", "application/xmpp+xml"]), texts),
    st.lists(st.tuples(entity_names, texts), max_size=3),
    st.binary(max_size=20),
)
def test_entity_headers_are_the_bytes_build_writes(
    content_type: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    written = cpim.encode_entity_headers(content_type, headers)
    try:
        built: bytes | None = bytes(
            cpim.build(
                sender="im:a@x",
                to=["im:b@y"],
                content_type=content_type,
                entity_headers=headers,
                body=body,
            )
        )
    except ValueError:
        built = None
    if written is not None:
        assert built == cpim.encode_parties("im:a@x", ("im:b@y",)) + b"\r\n" + written + body
    plain = (
        content_type in ("text/plain; charset=utf-8", "application/xmpp+xml")
        and all(
            n.startswith("Content-") and n.isascii() and ":" not in n and " " not in n
            for n, _ in headers
        )
        and all(v.isprintable() for _, v in headers)
    )
    assert written is not None or not plain, "the common case must be written directly"
