"""``smime``'s sender identities are remembered, and remembering changes no answer.

The security verdict compares every message's sender with its CPIM From
(``smime.match_sender``, RFC 3862 §2.2, RFC 3923 §6.3); the identity of a URI is a pure
function of its text, so a remembered one must equal the one computed afresh.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from canonical import smime

uris = st.one_of(
    st.sampled_from(
        [
            "im:alice@xmpp.example.com",
            "xmpp:alice@xmpp.example.com/phone",
            "alice@xmpp.example.com/pc",
            "sip:alice:pw@XMPP.example.com:5060;transport=tcp",
            "xmpp:d\\27artagnan@x",
            "im:d'artagnan@x",
            "xmpp:foo\\5cbar@x",
            "tel:+123",
            "pres:bob@bücher.example",
        ]
    ),
    st.from_regex(
        r"(im|pres|sip|sips|xmpp|tel):[a-z%\\'0-9]{0,6}@?[A-Za-z.:]{0,8}", fullmatch=True
    ),
    st.text(max_size=20),
    st.text(alphabet="im:a@x", min_size=510, max_size=520),
)


@given(uris)
def test_a_remembered_identity_is_the_computed_one(uri: str) -> None:
    fresh = smime._read_identity(uri)
    assert smime._identity(uri) == fresh
    assert smime._identity(uri) == fresh  # the second answer comes from memory


@given(uris, st.lists(uris, max_size=3))
def test_match_sender_answers_as_without_memory(expected: str, candidates: list[str]) -> None:
    first = smime.match_sender(expected, candidates)
    smime._remembered_identity.cache_clear()
    assert smime.match_sender(expected, candidates) == first


def test_the_memory_is_bounded_in_entries_and_length() -> None:
    for i in range(smime.IDENTITIES_REMEMBERED + 10):
        smime._identity(f"im:user{i}@example.com")
    assert smime._remembered_identity.cache_info().currsize <= smime.IDENTITIES_REMEMBERED
    smime._remembered_identity.cache_clear()
    long = "im:" + "a" * smime.IDENTITY_REMEMBERED_LENGTH + "@example.com"
    assert smime._identity(long) == ("im", "a" * smime.IDENTITY_REMEMBERED_LENGTH, "example.com")
    assert smime._remembered_identity.cache_info().currsize == 0
