"""The one-regex readings of common header values give what the full grammar gives."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from adapters.sip import header as hdr
from canonical.errors import ParseError

token = st.text(alphabet="abcAZ09.-_!%*+`'~", min_size=1, max_size=8)
value = st.text(alphabet="abcAZ09.-_!%*+`'~:[]", min_size=1, max_size=8)
host = st.sampled_from(["sip.test", "127.0.0.1", "[::1]", "a-b.example.com", "x_y", "h:99999"])
uri = st.builds(
    lambda scheme, user, h, port, params: f"{scheme}:{user}{h}{port}{params}",
    st.sampled_from(["sip", "sips", "tel", "im", "SIP"]),
    st.sampled_from(["", "bob@", "b%20ob@", "a:b@", "@"]),
    host,
    st.sampled_from(["", ":5060", ":0", ":x"]),
    st.sampled_from(["", ";lr", ";transport=udp", ";gr=bench", ";=x"]),
)
params = st.lists(st.tuples(token, st.one_of(st.none(), value)), max_size=4).map(
    lambda ps: "".join(f";{n}" if v is None else f";{n}={v}" for n, v in ps)
)


def outcome(read: object, text: str) -> object:
    try:
        return read(text)  # type: ignore[operator]
    except ParseError as exc:
        return ("error", exc.code, str(exc))


def general_name_addr(text: str) -> hdr.NameAddr:
    cur = hdr._Cursor(text)
    found = hdr._parse_name_addr_at(cur)
    hdr._finish(cur, "address")
    return found


@given(uri, params, st.sampled_from(["", " ", "<", ">", '"', ";", "; tag=1"]))
@example("sip:bob@sip.test", ";tag=4321b17", "")
def test_a_simple_name_addr_reads_as_the_grammar_reads_it(u: str, p: str, tail: str) -> None:
    text = f"<{u}>{p}{tail}"
    assert outcome(hdr.parse_name_addr, text) == outcome(general_name_addr, text)


@given(
    st.sampled_from(["0", "1", "17", "000000001", "999999999", "2147483647", "2147483648", ""]),
    st.sampled_from([" ", "  ", "\t", ""]),
    st.sampled_from(["MESSAGE", "NOTIFY", "x!", "", "MES SAGE", "MESSAGE "]),
)
def test_a_simple_cseq_reads_as_the_grammar_reads_it(number: str, gap: str, method: str) -> None:
    text = f"{number}{gap}{method}"
    assert outcome(hdr.parse_cseq, text) == outcome(hdr._parse_cseq, text)
