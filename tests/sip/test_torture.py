"""RFC 4475 (SIP torture tests), written as our own messages from the RFC's descriptions.

Each test names the RFC 4475 case it follows and pins what that RFC says a robust
element does: parse the valid tortures (§3.1.1) and keep their bytes; refuse the invalid
ones (§3.1.2) with the right response, or drop them when they are responses; and apply
the transaction- and application-layer semantics of §3.1.3 and §3.3.
"""

from __future__ import annotations

import pytest

from adapters.sip.codec import Limits, Request, Response, parse
from adapters.sip.transaction import server_key
from adapters.sip.validation import KNOWN_METHODS, check_request, check_response
from canonical.errors import ParseError

CRLF = "\r\n"


def wire(*lines: str, body: bytes = b"") -> bytes:
    return (CRLF.join(lines) + CRLF + CRLF).encode("utf-8") + body


def request(data: bytes) -> Request:
    msg = parse(data)
    assert isinstance(msg, Request)
    assert bytes(msg) == data[: len(bytes(msg))]
    return msg


def status_of(data: bytes, methods: frozenset[str] = KNOWN_METHODS) -> int | None:
    refusal = check_request(request(data), methods=methods)
    return None if refusal is None else refusal.status


SDP = b"v=0\r\no=carol 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n"

# ------------------------------------------------------------------- §3.1.1 valid messages


def test_short_tortuous_invite_parses_whitespace_folding_and_compact_forms() -> None:
    """§3.1.1.1 (wsinv): LWS around colons, SLASH and EQUAL, folded values, mixed case,
    compact forms, an empty Subject, a list header with extra separators."""
    data = wire(
        "INVITE sip:carol@chair.example.org;oddparam SIP/2.0",
        "tO :",
        " sip:carol@chair.example.org ;   tag    = 7731x",
        'frOm   : "Dave \\\\\\""       <sip:dave@example.org>',
        "  ;",
        "  tag = 55kk1",
        "MAX-forwards: 0069",
        "Call-ID: torture1.aa91@192.0.2.4",
        f"Content-Length   : {len(SDP)}",
        "cSeQ: 0012",
        "  INVITE",
        "Via  : SIP  /   2.0",
        " /UDP",
        "    192.0.2.4;branch=9zzqq1",
        "s :",
        "AnotherNewHeader:   first part",
        " second part",
        "OddValueHeader: ;;,,;;,;",
        "Content-Type: application/sdp",
        "Route:",
        " <sip:svc.example.org;lr;withvalue=v;novalue>",
        "v:  SIP  / 2.0  / TCP     relay.example.org   ;",
        "  branch  =   z9hG4bKq1w2e3  ,",
        " SIP  /    2.0   / UDP  192.168.7.8   ; branch=",
        " z9hG4bK44rr",
        'm:"Two \\"\\"" <sip:dave@example.org> ; p1 =',
        "      v1 ;",
        "  p2 ; q = 0.5",
        body=SDP,
    )
    msg = request(data)
    assert bytes(msg) == data
    assert msg.to.tag == "7731x"
    assert msg.from_.display_name == 'Dave \\"'
    assert msg.from_.tag == "55kk1"
    assert msg.max_forwards == 69
    assert (msg.cseq.number, msg.cseq.method) == (12, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in msg.vias] == [
        ("UDP", "192.0.2.4", "9zzqq1"),
        ("TCP", "relay.example.org", "z9hG4bKq1w2e3"),
        ("UDP", "192.168.7.8", "z9hG4bK44rr"),
    ]
    assert msg.get("Subject") == ""
    assert msg.get("anothernewheader") == "first part second part"
    contact = msg.contact
    assert contact is not None
    assert contact.display_name == 'Two ""'
    assert contact.param("q") == "0.5"
    assert msg.body == SDP
    assert check_request(msg, methods=KNOWN_METHODS) is None


def test_wide_range_of_valid_characters_is_accepted() -> None:
    """§3.1.1.2 (intmeth): an unusual method token, a URI full of legal marks, escaped
    control characters in a quoted string, a non-ASCII header value. The method is unknown,
    so a UAS answers 501 (§8.2.1)."""
    method = "!odd-Method0123456789_*+`.%really'~"
    uri = "sip:2_odd.URI~(sure!)&isn't+it$/mad?,/;;*:&pw+has=2,odd!*pa$s~w_d.(yes)@example.org"
    data = wire(
        f"{method} {uri} SIP/2.0",
        'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <' + uri + ">",
        "From: tok1~` tok2'+_ tok3*%!.- <sip:plain@example.org>"
        ";prm''~+*_!.-%=\"настоящий\";tag=_tag~1'+`*%!-.",
        "Call-ID: callid.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
        f"CSeq: 1391 {method}",
        "Via: SIP/2.0/TCP host1.example.org;branch=z9hG4bK-.!%66*_+`'~",
        "Max-Forwards: 255",
        "oddHeaderName-!.%*+_`'~:\ufeff大停電",
        "Content-Length: 0",
    )
    msg = request(data)
    assert msg.method == method
    assert msg.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    ruri = msg.request_uri
    assert ruri.host == "example.org"
    assert ruri.password == "&pw+has=2,odd!*pa$s~w_d.(yes)"
    assert msg.from_.display_name == "tok1~` tok2'+_ tok3*%!.-"
    assert msg.from_.param("prm''~+*_!.-%") == "настоящий"
    assert msg.get("oddHeaderName-!.%*+_`'~") == "\ufeff大停電"
    assert status_of(data) == 501


def test_escaped_request_uri_is_compared_unescaped() -> None:
    """§3.1.1.3 (esc01): %-escapes in the Request-URI user part and in headers."""
    data = wire(
        "INVITE sip:sips%3Auser%40example.org@example.net SIP/2.0",
        "To: sip:%75se%72@example.org",
        "From: <sip:I%20have%20spaces@example.net>;tag=938",
        "Max-Forwards: 87",
        "i: esc01.239409asdfakjkn23onasd0-3234",
        "CSeq: 234234 INVITE",
        "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw",
        "C: application/sdp",
        "Contact: <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>",
        f"Content-Length: {len(SDP)}",
        body=SDP,
    )
    msg = request(data)
    assert msg.request_uri.user_unescaped() == "sips:user@example.org"
    assert msg.request_uri.host == "example.net"
    assert msg.to.uri.user_unescaped() == "user"
    assert msg.from_.uri.user_unescaped() == "I have spaces"
    assert status_of(data) is None


def test_escaped_nulls_in_uris_are_accepted() -> None:
    """§3.1.1.4 (escnull): %00 in user parts is legal and must not truncate anything."""
    data = wire(
        "REGISTER sip:example.org SIP/2.0",
        "To: sip:null-%00-null@example.org",
        "From: sip:null-%00-null@example.org;tag=839923423",
        "Max-Forwards: 70",
        "Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd",
        "CSeq: 14398234 REGISTER",
        "Via: SIP/2.0/UDP host5.example.org;branch=z9hG4bKkdjuw",
        "Contact: <sip:%00@host5.example.org>",
        "Contact: <sip:%00%00@host5.example.org>",
        "L:0",
    )
    msg = request(data)
    assert msg.to.uri.user_unescaped() == "null-\x00-null"
    assert msg.values("Contact") == [
        "<sip:%00@host5.example.org>",
        "<sip:%00%00@host5.example.org>",
    ]
    assert status_of(data) is None


def test_percent_signs_that_are_not_escapes_make_an_unknown_method() -> None:
    """§3.1.1.5 (esc02): RE%47IST%45R is not REGISTER; the element answers 501."""
    data = wire(
        "RE%47IST%45R sip:registrar.example.org SIP/2.0",
        'To: "%Z%45" <sip:resource@example.org>',
        "From: <sip:%user@example.org>;tag=f232jadfj23",
        "Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf",
        "Via: SIP/2.0/TCP host.example.org;branch=z9hG4bK209793",
        "Max-Forwards: 70",
        "CSeq: 29344 RE%47IST%45R",
        "l: 0",
    )
    msg = request(data)
    assert msg.method == "RE%47IST%45R"
    assert msg.to.display_name == "%Z%45"
    assert status_of(data) == 501


def test_display_name_without_space_before_angle_bracket() -> None:
    """§3.1.1.6 (lwsdisp)."""
    data = wire(
        "OPTIONS sip:user@example.org SIP/2.0",
        "To: sip:user@example.org",
        "From: caller<sip:caller@example.org>;tag=323",
        "Max-Forwards: 70",
        "Call-ID: lwsdisp.1234abcd@funky.example.org",
        "CSeq: 60 OPTIONS",
        "Via: SIP/2.0/UDP funky.example.org;branch=z9hG4bKkdjuw",
        "l: 0",
    )
    msg = request(data)
    assert msg.from_.display_name == "caller"
    assert status_of(data) is None


def test_long_values_are_accepted_within_policy_limits() -> None:
    """§3.1.1.7 (longreq): very long display names, tags, Call-IDs, header names and many
    Via fields. Lengths are bounded only by the configured limits."""
    long = "a" * 3000
    vias = [f"Via: SIP/2.0/TCP sip{i}.example.org;branch=z9hG4bK{i:04d}" for i in range(60)]
    data = wire(
        "INVITE sip:user@example.org SIP/2.0",
        f'To: "I have a user name of {long} proportion" <sip:user@example.org:6000;unknownparam=v;{"x" * 500}=y>',  # noqa: E501
        f"From: sip:{'l' * 900}@example.org;tag={'t' * 800}",
        f"Call-ID: longreq.{'c' * 1500}",
        "CSeq: 3882340 INVITE",
        f"Unknown-{'L' * 400}: unknown-{'v' * 2000}",
        *vias,
        "Max-Forwards: 70",
        "l: 0",
    )
    msg = request(data)
    assert bytes(msg) == data
    assert len(msg.vias) == 60
    assert msg.from_.tag == "t" * 800
    assert status_of(data) is None
    with pytest.raises(ParseError) as err:
        parse(data, limits=Limits(max_line=1024))
    assert err.value.code == "LINE_TOO_LONG"


def test_extra_octets_after_content_length_in_a_datagram_are_discarded() -> None:
    """§3.1.1.8 (dblreq): a REGISTER with Content-Length 0 followed by an INVITE in the same
    UDP datagram: the REGISTER is processed, the rest discarded (RFC 3261 §18.3)."""
    register = wire(
        "REGISTER sip:example.org SIP/2.0",
        "To: sip:j.user@example.org",
        "From: sip:j.user@example.org;tag=43251j3j324",
        "Max-Forwards: 8",
        "I: dblreq.0ha0isndaksdj99sdfafnl3lk233412",
        "Contact: sip:j.user@host.example.org",
        "CSeq: 8 REGISTER",
        "Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492",
        "Content-Length: 0",
    )
    invite = wire(
        "INVITE sip:joe@example.org SIP/2.0",
        "t: sip:joe@example.org",
        "From: sip:caller@example.net;tag=141334",
        "Max-Forwards: 8",
        "Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15",
        "CSeq: 8 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234",
        "l: 0",
    )
    msg = parse(register + invite)
    assert isinstance(msg, Request)
    assert msg.method == "REGISTER"
    assert bytes(msg) == register
    assert [d.code for d in msg.defects] == ["EXCESS_BYTES"]


def test_semicolons_in_the_user_part_belong_to_the_user() -> None:
    """§3.1.1.9 (semiuri): ``sip:user;par=u%40example.net@example.org``."""
    data = wire(
        "OPTIONS sip:user;par=u%40example.net@example.org SIP/2.0",
        "To: sip:j_user@example.org",
        "From: sip:caller@example.net;tag=33242",
        "Max-Forwards: 3",
        "Call-ID: semiuri.0ha0isndaksdj",
        "CSeq: 8 OPTIONS",
        "Accept: application/sdp, application/pkcs7-mime,",
        "        multipart/mixed, multipart/signed,",
        "        message/sip, message/sipfrag",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw",
        "l: 0",
    )
    msg = request(data)
    uri = msg.request_uri
    assert uri.user == "user;par=u%40example.net"
    assert uri.host == "example.org"
    assert uri.params == ()
    assert len(msg.values("Accept")) == 6
    assert status_of(data) is None


def test_varied_and_unknown_transports_in_via() -> None:
    """§3.1.1.10 (transports)."""
    data = wire(
        "OPTIONS sip:user@example.org SIP/2.0",
        "To: sip:user@example.org",
        "From: <sip:caller@example.org>;tag=323",
        "Max-Forwards: 70",
        "Call-ID: transports.kijh4akdnaqjkwendsasfdj",
        "Accept: application/sdp",
        "CSeq: 60 OPTIONS",
        "Via: SIP/2.0/UDP t1.example.org;branch=z9hG4bKkdjuw",
        "Via: SIP/2.0/SCTP t2.example.org;branch=z9hG4bKklasjdhf",
        "Via: SIP/2.0/TLS t3.example.org;branch=z9hG4bK2980unddj",
        "Via: SIP/2.0/UNKNOWN t4.example.org;branch=z9hG4bKasd0f3en",
        "Via: SIP/2.0/TCP t5.example.org;branch=z9hG4bK0a9idfnee",
        "l: 0",
    )
    msg = request(data)
    assert [v.transport for v in msg.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert status_of(data) is None


def test_multipart_binary_body_is_kept_byte_for_byte() -> None:
    """§3.1.1.11 (mpart01): a multipart/signed body with binary parts (NUL, CR, LF, 8-bit)."""
    binary = bytes(range(256)) + b"\r\n\r\n--boundary42\r\n" + bytes(range(255, -1, -1))
    body = (
        b"--boundary42\r\nContent-Type: message/cpim\r\n\r\nFrom: <im:a@example.org>\r\n\r\n"
        b"Content-Type: text/plain\r\n\r\nhi\r\n--boundary42\r\n"
        b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
        b"Content-Transfer-Encoding: binary\r\n\r\n" + binary + b"\r\n--boundary42--\r\n"
    )
    data = wire(
        "MESSAGE sip:kumiko@example.org SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK83749",
        "Max-Forwards: 70",
        "From: <sip:bob@example.org>;tag=8923",
        "To: <sip:kumiko@example.org>",
        "Call-ID: mpart01.2@example.org",
        "CSeq: 1 MESSAGE",
        'Content-Type: multipart/signed; protocol="application/pkcs7-signature";'
        " micalg=sha-256; boundary=boundary42",
        f"Content-Length: {len(body)}",
        body=body,
    )
    msg = request(data)
    assert msg.body == body
    assert msg.content_type is not None
    assert msg.content_type.param("boundary") == "boundary42"
    assert status_of(data) is None


def test_unusual_reason_phrase_in_utf8() -> None:
    """§3.1.1.12 (unreason): any UTF-8 text is a valid reason phrase."""
    reason = "= 2**3 * 5**2 сто девяносто девять — простое"
    data = wire(
        f"SIP/2.0 200 {reason}",
        "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
        "Call-ID: unreason.1234ksdfak3j2erwedfsASdf",
        "CSeq: 35 INVITE",
        "From: sip:user@example.org;tag=11141343",
        "To: sip:user@example.edu;tag=2229",
        "Content-Length: 0",
    )
    msg = parse(data)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (200, reason)
    assert check_response(msg) is None


def test_empty_reason_phrase() -> None:
    """§3.1.1.13 (noreason): ``SIP/2.0 100 `` followed by CRLF."""
    data = wire(
        "SIP/2.0 100 ",
        "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe",
        "Call-ID: noreason.asndj203insdf99223ndf",
        "CSeq: 35 INVITE",
        "From: <sip:user@example.org>;tag=39ansfi3",
        "To: <sip:user@example.edu>;tag=902jndnke3",
        "Content-Length: 0",
    )
    msg = parse(data)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (100, "")
    assert bytes(msg) == data


# ----------------------------------------------------------------- §3.1.2 invalid messages

BASE = (
    "To: sip:j.user@example.org",
    "From: sip:caller@example.net;tag=134161461246",
    "Max-Forwards: 7",
    "Call-ID: torture.0ha0isndaksdjasdf3234nas",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw",
)


def replace(lines: tuple[str, ...], name: str, line: str) -> list[str]:
    return [line if existing.startswith(name + ":") else existing for existing in lines]


def test_extraneous_separators_in_via_and_contact_get_400() -> None:
    """§3.1.2.1 (badinv01)."""
    lines = replace(BASE, "Via", "Via: SIP/2.0/UDP 192.0.2.15;;,;,,")
    data = wire(
        "INVITE sip:user@example.org SIP/2.0",
        *lines,
        'Contact: "Joe" <sip:joe@example.org>;;;;',
        "l: 0",
    )
    assert status_of(data) == 400


def test_content_length_larger_than_the_datagram_is_refused() -> None:
    """§3.1.2.2 (clerr): over UDP the element answers 400 (the endpoint does, from the
    ParseError's code); on a stream it waits for the rest."""
    data = wire("INVITE sip:user@example.org SIP/2.0", *BASE, "Content-Length: 9999", body=SDP)
    with pytest.raises(ParseError) as err:
        parse(data)
    assert err.value.code == "TRUNCATED"


def test_negative_content_length_is_refused() -> None:
    """§3.1.2.3 (ncl)."""
    data = wire("INVITE sip:user@example.org SIP/2.0", *BASE, "Content-Length: -999", body=SDP)
    with pytest.raises(ParseError) as err:
        parse(data)
    assert err.value.code == "BAD_CONTENT_LENGTH"


def test_overlarge_cseq_gets_400_and_overlarge_max_forwards_too() -> None:
    """§3.1.2.4 (scalar02): CSeq >= 2**31 is an error; Max-Forwards above 255 as well."""
    lines = replace(BASE, "CSeq", "CSeq: 36893488147419103232 REGISTER")
    data = wire("REGISTER sip:example.org SIP/2.0", *lines, "Expires: 10000000000000000", "l: 0")
    assert status_of(data) == 400
    lines = replace(BASE, "Max-Forwards", "Max-Forwards: 300")
    data = wire("INVITE sip:user@example.org SIP/2.0", *lines, "l: 0")
    assert status_of(data) == 400


def test_response_with_overlarge_scalars_is_dropped() -> None:
    """§3.1.2.5 (scalarlg): a response cannot be refused, only discarded."""
    data = wire(
        "SIP/2.0 503 Service Unavailable",
        "Via: SIP/2.0/TCP 192.0.2.15;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129",
        "To: <sip:user@example.org>",
        "From: <sip:other@example.net>;tag=2easdjfejw",
        "CSeq: 9292394834772304023312 OPTIONS",
        "Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r",
        "Retry-After: 949302838503028349304023988",
        'Warning: 1812 overture "In Progress"',
        "Content-Length: 0",
    )
    msg = parse(data)
    assert isinstance(msg, Response)
    assert check_response(msg) is not None


def test_unterminated_quote_in_display_name_gets_400() -> None:
    """§3.1.2.6 (quotbal)."""
    lines = replace(BASE, "To", 'To: "Mr. J. User <sip:j.user@example.org>')
    data = wire("INVITE sip:user@example.org SIP/2.0", *lines, "l: 0")
    assert status_of(data) == 400


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("INVITE <sip:user@example.org> SIP/2.0", "BAD_REQUEST_URI"),  # §3.1.2.7 ltgtruri
        ("INVITE sip:user@example.org; lr SIP/2.0", "BAD_REQUEST_LINE"),  # §3.1.2.8 lwsruri
        ("INVITE  sip:user@example.org  SIP/2.0", "BAD_REQUEST_LINE"),  # §3.1.2.9 lwsstart
        ("OPTIONS sip:remote-target@example.org SIP/2.0  ", "BAD_REQUEST_LINE"),  # §3.1.2.10
    ],
)
def test_malformed_request_lines_are_refused(line: str, code: str) -> None:
    data = wire(line, *BASE, "l: 0")
    with pytest.raises(ParseError) as err:
        parse(data)
    assert err.value.code == code


def test_escaped_headers_in_the_request_uri_get_400() -> None:
    """§3.1.2.11 (escruri)."""
    data = wire("INVITE sip:user@example.org?Route=%3Csip:example.org%3E SIP/2.0", *BASE, "l: 0")
    assert status_of(data) == 400


def test_invalid_date_is_ignored_not_fatal() -> None:
    """§3.1.2.12 (baddate): Date is not interpreted by the gateway; the request proceeds."""
    data = wire(
        "INVITE sip:user@example.org SIP/2.0", *BASE, "Date: Fri, 01 Jan 2010 16:00:00 EST", "l: 0"
    )
    assert status_of(data) is None


def test_contact_uri_with_headers_outside_brackets_is_refused() -> None:
    """§3.1.2.13 (regbadct)."""
    data = wire(
        "REGISTER sip:example.org SIP/2.0",
        *replace(BASE, "CSeq", "CSeq: 1 REGISTER"),
        "Contact: sip:user@example.org?Route=%3Csip:sip.example.org%3E",
        "l: 0",
    )
    msg = request(data)
    with pytest.raises(ParseError) as err:
        msg.contact  # noqa: B018
    assert err.value.code == "BAD_ADDRESS"


def test_spaces_inside_angle_brackets_get_400() -> None:
    """§3.1.2.14 (badaspec)."""
    lines = replace(BASE, "To", 'To: "Watson, Thomas" < sip:t.watson@example.org >')
    assert (
        status_of(
            wire(
                "OPTIONS sip:t.watson@example.org SIP/2.0",
                *replace(lines, "CSeq", "CSeq: 1 OPTIONS"),
                "l: 0",
            )
        )
        == 400
    )


def test_unquoted_comma_in_display_name_gets_400() -> None:
    """§3.1.2.15 (baddn)."""
    lines = replace(BASE, "From", "From: Bell, Alexander <sip:a.g.bell@example.org>;tag=43")
    assert status_of(wire("INVITE sip:user@example.org SIP/2.0", *lines, "l: 0")) == 400


def test_unknown_protocol_version_gets_505() -> None:
    """§3.1.2.16 (badvers)."""
    lines = replace(BASE, "Via", "Via: SIP/7.0/UDP c.example.org;branch=z9hG4bKkdjuw")
    data = wire(
        "OPTIONS sip:t.watson@example.org SIP/7.0",
        *replace(lines, "CSeq", "CSeq: 1 OPTIONS"),
        "l: 0",
    )
    assert status_of(data) == 505


def test_cseq_method_mismatch_gets_400_even_for_an_unknown_method() -> None:
    """§3.1.2.17-18 (mismatch01, mismatch02): 400, not 501."""
    assert status_of(wire("OPTIONS sip:user@example.org SIP/2.0", *BASE, "l: 0")) == 400
    assert status_of(wire("NEWMETHOD sip:user@example.org SIP/2.0", *BASE, "l: 0")) == 400


def test_overlarge_response_code_is_refused() -> None:
    """§3.1.2.19 (bigcode)."""
    data = wire("SIP/2.0 4294967301 better not break the receiver", *BASE, "l: 0")
    with pytest.raises(ParseError) as err:
        parse(data)
    assert err.value.code == "BAD_STATUS_CODE"


# -------------------------------------------- §3.1.3 transaction layer, §3.3 application


def test_branch_of_only_the_magic_cookie_falls_back_to_rfc2543_matching() -> None:
    """§3.1.3.1 (badbranch): ``branch=z9hG4bK`` alone is not a transaction id."""
    lines = replace(BASE, "Via", "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bK")
    msg = request(
        wire(
            "OPTIONS sip:user@example.org SIP/2.0",
            *replace(lines, "CSeq", "CSeq: 8 OPTIONS"),
            "l: 0",
        )
    )
    assert not msg.top_via.has_cookie
    assert server_key(msg)[0] == "2543"
    assert check_request(msg, methods=KNOWN_METHODS) is None


def test_missing_required_headers_get_400() -> None:
    """§3.3.1 (insuf)."""
    data = wire(
        "INVITE sip:user@example.org SIP/2.0",
        "CSeq: 193942 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf",
        "l: 0",
    )
    assert status_of(data) == 400


@pytest.mark.parametrize(
    "uri", ["nobodyKnowsThisScheme:totallyopaquecontent", "soap.beep://192.0.2.103:3002"]
)
def test_unknown_or_atypical_request_uri_scheme_gets_416(uri: str) -> None:
    """§3.3.2 (unkscm), §3.3.3 (novelsc)."""
    lines = replace(BASE, "CSeq", "CSeq: 3923239 OPTIONS")
    assert status_of(wire(f"OPTIONS {uri} SIP/2.0", *lines, "l: 0")) == 416


def test_unknown_schemes_in_header_fields_are_accepted() -> None:
    """§3.3.4 (unksm2)."""
    data = wire(
        "REGISTER sip:example.org SIP/2.0",
        "To: isbn:2983792873",
        "From: <http://www.example.org>;tag=3234233",
        "Call-ID: unksm2.daksdj@hyphenated-host.example.org",
        "CSeq: 234902 REGISTER",
        "Max-Forwards: 70",
        "Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw",
        "Contact: <name:John_Smith>",
        "l: 0",
    )
    msg = request(data)
    assert msg.to.uri.scheme == "isbn"
    assert msg.from_.uri.scheme == "http"
    assert status_of(data) is None


def test_unsupported_require_gets_420_with_unsupported() -> None:
    """§3.3.5 (bext01)."""
    data = wire(
        "INVITE sip:user@example.org SIP/2.0",
        *BASE,
        "Require: nothingSupportedHere",
        "Proxy-Require: nothingHere",
        "l: 0",
    )
    refusal = check_request(request(data), methods=KNOWN_METHODS)
    assert refusal is not None
    assert refusal.status == 420
    assert refusal.headers == (("Unsupported", "nothingSupportedHere"),)


def test_multiple_values_in_single_value_fields_get_400() -> None:
    """§3.3.8 (multi01)."""
    data = wire(
        "INVITE sip:user@example.org SIP/2.0",
        *BASE,
        "Call-ID: multi01.98asdh@192.0.2.2",
        "To: sip:other@example.net",
        "l: 0",
    )
    assert status_of(data) == 400


def test_multiple_content_length_values_are_refused() -> None:
    """§3.3.9 (mcl01)."""
    data = wire(
        "INVITE sip:user@example.org SIP/2.0", *BASE, "Content-Length: 0", "l: 11", body=b""
    )
    with pytest.raises(ParseError) as err:
        parse(data)
    assert err.value.code == "MULTIPLE_CONTENT_LENGTH"


def test_max_forwards_zero_gets_483_except_for_options() -> None:
    """§3.3.11 (zeromf) with RFC 3261 §16.3 and RFC 3860 §3.4.2: the gateway relays, so a
    MESSAGE with no hops left is refused; OPTIONS is answered by the gateway itself."""
    lines = replace(
        replace(tuple(BASE), "Max-Forwards", "Max-Forwards: 0"), "CSeq", "CSeq: 1 MESSAGE"
    )
    assert status_of(wire("MESSAGE sip:user@example.org SIP/2.0", *lines, "l: 0")) == 483
    lines = replace(tuple(lines), "CSeq", "CSeq: 1 OPTIONS")
    assert status_of(wire("OPTIONS sip:user@example.org SIP/2.0", *lines, "l: 0")) is None


def test_rfc2543_style_request_is_processed() -> None:
    """§3.4.1 (inv2543): no branch cookie, no Max-Forwards, no From tag."""
    data = wire(
        "INVITE sip:UserB@example.org SIP/2.0",
        "Via: SIP/2.0/UDP iftgw.example.org",
        "From: <sip:+13035551111@ift.client.example.net;user=phone>",
        "Record-Route: <sip:UserB@example.org;maddr=ss1.example.org>",
        "To: sip:+16505552222@ss1.example.net;user=phone",
        "Call-ID: inv2543.1717@ift.client.example.org",
        "CSeq: 56 INVITE",
        "Content-Type: application/sdp",
        f"Content-Length: {len(SDP)}",
        body=SDP,
    )
    msg = request(data)
    assert server_key(msg)[0] == "2543"
    assert status_of(data) is None
