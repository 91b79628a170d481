"""Digest authentication (RFC 7616, RFC 8760): published examples and client/server laws."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.sip import header as hdr
from adapters.sip.codec import Request, Response
from adapters.sip.digest import (
    Credential,
    DigestClient,
    DigestServer,
    challenges,
    response_value,
)


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1_examples(algorithm: str, expected: str) -> None:
    assert (
        response_value(
            algorithm=algorithm,
            username="Mufasa",
            realm="http-auth@example.org",
            password="Circle of Life",
            method="GET",
            uri="/dir/index.html",
            nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            qop="auth",
            nc="00000001",
            cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        )
        == expected
    )


def test_rfc2617_example_with_qop_auth() -> None:
    assert (
        response_value(
            algorithm="MD5",
            username="Mufasa",
            realm="testrealm@host.com",
            password="Circle Of Life",
            method="GET",
            uri="/dir/index.html",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            qop="auth",
            nc="00000001",
            cnonce="0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


def request() -> Request:
    return Request.build(
        "MESSAGE",
        "sip:bob@example.org",
        [
            ("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"),
            ("From", "<sip:alice@example.org>;tag=1"),
            ("To", "<sip:bob@example.org>"),
            ("Call-ID", "a@b"),
            ("CSeq", "1 MESSAGE"),
        ],
        b"hi",
    )


def challenge_response(server: DigestServer, now: float, *, stale: bool = False) -> Response:
    status = 407 if server.proxy else 401
    return Response.build(status, "Unauthorized", server.challenge(now, stale=stale))


def test_strongest_offered_algorithm_is_chosen() -> None:
    server = DigestServer("example.org", b"k", {"alice": "pw"}, algorithms=("MD5", "SHA-256"))
    found = challenges(challenge_response(server, 0.0))
    assert [c.algorithm for c in found] == ["SHA-256", "MD5"]
    lines = DigestClient([Credential("alice", "pw")]).answer(
        request(), challenge_response(server, 0.0), cnonce="c"
    )
    assert lines is not None
    assert len(lines) == 1
    assert "algorithm=SHA-256" in lines[0][1]


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256", "SHA-512-256", "SHA-256-sess"])
@pytest.mark.parametrize("proxy", [False, True])
def test_client_answer_passes_server_check(algorithm: str, proxy: bool) -> None:
    server = DigestServer(
        "example.org", b"k", {"alice": "pw"}, algorithms=(algorithm,), proxy=proxy
    )
    req = request()
    lines = DigestClient([Credential("alice", "pw", "example.org")]).answer(
        req, challenge_response(server, 10.0), cnonce="abc"
    )
    assert lines is not None
    name, value = lines[0]
    assert name == ("Proxy-Authorization" if proxy else "Authorization")
    assert hdr.parse_auth(value).get("qop") == "auth"
    authed = req.with_header(name, value)
    verdict = server.verify(authed, 11.0)
    assert verdict.ok
    assert verdict.username == "alice"
    assert not server.verify(authed, 12.0).ok  # same nonce count again: replay


def test_wrong_password_and_expired_nonce_are_refused() -> None:
    server = DigestServer("example.org", b"k", {"alice": "pw"}, nonce_ttl=30)
    req = request()
    bad = DigestClient([Credential("alice", "nope")]).answer(
        req, challenge_response(server, 0.0), cnonce="x"
    )
    assert bad is not None
    assert server.verify(req.with_header(*bad[0]), 1.0).detail == "wrong password or digest"
    good = DigestClient([Credential("alice", "pw")]).answer(
        req, challenge_response(server, 0.0), cnonce="x"
    )
    assert good is not None
    late = server.verify(req.with_header(*good[0]), 100.0)
    assert not late.ok
    assert late.stale


def test_client_does_not_loop_on_refused_credentials() -> None:
    server = DigestServer("example.org", b"k", {"alice": "pw"})
    client = DigestClient([Credential("alice", "wrong")])
    first = challenge_response(server, 0.0)
    req = request()
    lines = client.answer(req, first, cnonce="x")
    assert lines is not None
    retried = req.with_header(*lines[0])
    # the server answers with the same nonce (not stale): give up instead of looping
    assert client.answer(retried, first, cnonce="y", previous=retried) is None
    # a stale nonce is answered again
    assert client.answer(
        retried, challenge_response(server, 0.0, stale=True), cnonce="z", previous=retried
    )


def test_forged_nonce_is_refused() -> None:
    server = DigestServer("example.org", b"k", {"alice": "pw"})
    other = DigestServer("example.org", b"other-secret", {"alice": "pw"})
    req = request()
    lines = DigestClient([Credential("alice", "pw")]).answer(
        req, challenge_response(other, 0.0), cnonce="x"
    )
    assert lines is not None
    assert server.verify(req.with_header(*lines[0]), 1.0).detail == "nonce was not issued here"


@settings(max_examples=50)
@given(
    st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters='"\\'),
        min_size=1,
        max_size=20,
    ),
    st.text(min_size=1, max_size=20).filter(lambda s: "\r" not in s and "\n" not in s),
)
def test_any_credentials_round_trip_through_the_header_grammar(user: str, password: str) -> None:
    server = DigestServer("example.org", b"k", {user: password}, algorithms=("SHA-256",))
    req = request()
    lines = DigestClient([Credential(user, password)]).answer(
        req, challenge_response(server, 0.0), cnonce="n"
    )
    assert lines is not None
    assert server.verify(req.with_header(*lines[0]), 1.0).ok
