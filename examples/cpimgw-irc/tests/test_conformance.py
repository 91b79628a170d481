"""cpimgw's conformance suite against this adapter, run the way any plugin author runs it:
subclass the shipped test class. IRC declares message, non-ascii and errors only, so the
cases that need more (cpim-body, signed-body, presence, subscriptions, ...) are graded
UNSUPPORTED — with the adapter's recorded loss or clear refusal; a silent loss would FAIL.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import strategies as st

from adapters.conformance import AdapterConformance

VECTORS = Path(__file__).resolve().parent.parent / "vectors"

nicks = st.sampled_from(["alice", "b0b", "[x]\\y", "z^`|"])
addresses = st.sampled_from(
    ["sip:ada@example.net", "<im:ada@example.com>", "xmpp:c@xmpp.example.com"]
)
words = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FFF), min_size=1, max_size=10)


@st.composite
def privmsgs(draw: st.DrawFn) -> bytes:
    """PRIVMSG lines as ngIRCd relays them to the bot (RFC 2812 §3.3.1)."""
    text = " ".join(draw(st.lists(words, max_size=8)))
    prefix = f":{draw(nicks)}!~u@127.0.0.1 "
    target = draw(st.sampled_from(["cpimgw", "#lab"]))
    lead = "" if target == "#lab" else draw(addresses) + " "
    return f"{prefix}PRIVMSG {target} :{lead}{text}\r\n".encode()


class TestIrcConformance(AdapterConformance):
    adapter = "irc"
    vectors = (VECTORS,)
    peers = ("memory", "xmpp", "sip", "cpim")

    @classmethod
    def native_strategy(cls) -> st.SearchStrategy[bytes]:
        return privmsgs()
