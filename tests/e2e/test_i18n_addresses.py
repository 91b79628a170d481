"""Through Prosody, Kamailio, SIPp and ``cpimgw run``: user parts that are not plain
``user`` characters cross between XMPP and SIP as docs/addresses.md says.

- The XMPP user writes to ``a\\3a@sip.xmpp.test`` (the XEP-0106 escape of ``a:``); the SIP
  user is ``sip:a%3A@sip.test`` (percent-encoded, RFC 3261 §25.1), registered with Kamailio
  under that URI, and its answer comes back from the same JID. Likewise ``a\\20b`` /
  ``a%20b`` and ``o\\27neil`` / ``o'neil``.
- The SIP user ``sip:j%C3%BCrgen@sip.test`` (UTF-8 octets percent-encoded) writes to an XMPP
  user, who sees the message from ``jürgen@sip.xmpp.test``. (The other way cannot be shown
  through Kamailio: its registrar refuses to register a user whose percent-escapes decode
  outside printable ASCII, "Error while unescaping username"; the mapping itself is pinned
  in tests/xmpp/test_i18n_addresses.py.)
- A JID that cannot become a URI without ambiguity (``foo\\5cbar``, XEP-0106 §7) is answered
  ``jid-malformed`` by the gateway."""

from __future__ import annotations

import pytest

from canonical import cpim
from canonical.address import Address
from tests.e2e.peers import error_condition, is_message, sip_send, sip_user, statuses
from tests.e2e.stack import COMPONENT, SIP_DOMAIN, XMPP_DOMAIN, Stack
from tests.xmpp.users import logged_in

pytestmark = pytest.mark.e2e

#: (JID localpart on the component, the SIP user part the docs define for it)
USERS = [("a\\3a", "a%3A"), ("a\\20b", "a%20b"), ("o\\27neil", "o'neil")]


@pytest.mark.parametrize(("local", "sip_user_part"), USERS)
async def test_xmpp_user_reaches_the_percent_encoded_sip_user_and_hears_back_from_the_same_jid(
    prosody_stack: Stack, local: str, sip_user_part: str
) -> None:
    stack = prosody_stack
    jid = f"{local}@{COMPONENT}"
    async with logged_in(f"alice@{XMPP_DOMAIN}/i18n", "alicepw", stack.c2s_port) as alice:
        async with sip_user(stack, sip_user_part) as peer:
            alice.send_raw(
                f"<message to='{jid}' type='chat' id='i18n-{abs(hash(jid))}'>"
                "<body>Grüß dich</body></message>"
            )
            got = await peer.messages()
        assert len(got) == 1, f"{jid} did not reach sip:{sip_user_part}@{SIP_DOMAIN}"
        request = got[0]
        # Kamailio rewrote the Request-URI to the registered contact; To keeps the AOR
        to = Address.parse(request.to.uri.text)
        assert str(to.bare) == f"sip:{sip_user_part}@{SIP_DOMAIN}"
        assert to.user == Address.from_jid(jid).with_scheme("sip").user
        assert Address.parse(request.uri).user == to.user
        body = cpim.parse_body(request.body)
        assert [p.uri for p in body.to] == [f"sip:{sip_user_part}@{SIP_DOMAIN}"]
        assert body.body.decode() == "Grüß dich"

        answer = f"Antwort von {sip_user_part}\r\n".encode()
        run = await sip_send(
            stack,
            sender=sip_user_part,
            to="alice",
            content_type="text/plain;charset=UTF-8",
            body=answer,
            name=f"answer-{abs(hash(sip_user_part))}",
        )
        assert statuses(run) == [202], run.output
        stanza = await alice.wait_for(lambda s: is_message(s, sender=jid))
    assert stanza["body"] == f"Antwort von {sip_user_part}\n"


async def test_sip_user_with_a_non_ascii_name_writes_as_its_unescaped_jid(
    prosody_stack: Stack,
) -> None:
    stack = prosody_stack
    async with logged_in(f"carol@{XMPP_DOMAIN}/i18n", "carolpw", stack.c2s_port) as carol:
        run = await sip_send(
            stack,
            sender="j%C3%BCrgen",
            to="carol",
            content_type="text/plain;charset=UTF-8",
            body="Hallo von Jürgen\r\n".encode(),
            name="juergen-to-carol",
        )
        assert statuses(run) == [202], run.output
        stanza = await carol.wait_for(lambda s: is_message(s, sender=f"jürgen@{COMPONENT}"))
    assert stanza["body"] == "Hallo von Jürgen\n"


async def test_non_canonical_escape_is_answered_jid_malformed_by_the_gateway(
    prosody_stack: Stack,
) -> None:
    stack = prosody_stack
    async with logged_in(f"alice@{XMPP_DOMAIN}/amb", "alicepw", stack.c2s_port) as alice:
        alice.send_raw(
            f"<message to='foo\\5cbar@{COMPONENT}' type='chat' id='amb-1'>"
            "<body>which one?</body></message>"
        )
        error = await alice.wait_for(
            lambda s: s.name == "message" and s["type"] == "error" and s["id"] == "amb-1"
        )
    assert error_condition(error) == "jid-malformed", str(error)
    text = error.xml.findtext("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}text")
    assert text is not None, str(error)
    assert "JID_MALFORMED" in text, text
    assert "not canonically escaped" in text, text
