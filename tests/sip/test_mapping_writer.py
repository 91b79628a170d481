"""The direct writer of a MESSAGE's canonical object gives ``cpim.build``'s bytes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from adapters.sip.mapping import CANONICAL_TEXT, SIP_NS, write_cpim
from canonical import cpim

addresses = st.sampled_from(
    ["sip:bob@sip.test", "sip:alice@xmpp.test", "tel:+123", "sip:b%20b@h", "im:x@y", "sip:a>b@c"]
)
names = st.one_of(
    st.sampled_from(["sip.X-Custom", "sip.Priority", "sip.Content-Type", "sip.Organization"]),
    st.text(alphabet="sip.XY-_!~é", min_size=1, max_size=10),
)
texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from("\udc80\\"),
    max_size=20,
)
entity_names = st.sampled_from(["Content-Language", "Content-Id", "Content-Disposition"])


@given(
    addresses,
    addresses,
    st.lists(st.tuples(names, texts), max_size=4),
    st.one_of(st.just(CANONICAL_TEXT), texts),
    st.lists(st.tuples(entity_names, texts), max_size=2),
    st.binary(max_size=40),
)
def test_direct_bytes_are_the_bytes_build_writes(
    sender: str,
    recipient: str,
    extensions: list[tuple[str, str]],
    content_type: str,
    entity_headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    direct = write_cpim(
        sender,
        recipient,
        extensions=extensions,
        content_type=content_type,
        entity_headers=entity_headers,
        body=body,
    )
    try:
        built: bytes | None = bytes(
            cpim.build(
                sender=cpim.Party(None, sender),
                to=[cpim.Party(None, recipient)],
                namespaces=[("sip", SIP_NS)],
                extensions=extensions,
                content_type=content_type,
                entity_headers=entity_headers,
                body=body,
                form="body",
            )
        )
    except ValueError:
        built = None
    if direct is not None:
        assert direct == built
    common = _plain(extensions, content_type) and all(v.isprintable() for _, v in entity_headers)
    assert direct is not None or built is None or not common


def _plain(extensions: list[tuple[str, str]], content_type: str) -> bool:
    """The common case must take the direct way."""
    return content_type == CANONICAL_TEXT and all(
        n.startswith("sip.") and n[4:].replace("-", "").isalnum() and n[4:].isascii() and v
        for n, v in extensions
    )
