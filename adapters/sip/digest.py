"""HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616 §3, RFC 8760).

Client: answer a 401 (``WWW-Authenticate`` -> ``Authorization``) or 407
(``Proxy-Authenticate`` -> ``Proxy-Authorization``) with MD5, SHA-256 or SHA-512/256
(and their ``-sess`` forms), ``qop=auth`` (or ``auth-int``) or the RFC 2069 form when the
server offers no qop. When a response carries several challenges the strongest algorithm
we support wins (RFC 8760 §2.4).

Server (optional, for inbound requests): stateless nonces (timestamp + HMAC, so any
node with the secret can check them), ``stale=true`` for expired nonces (RFC 7616 §3.3),
``qop=auth`` and a replay check on (nonce, nc).

Pure: the clock (``now``) and the client nonce (``cnonce``) are passed in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from adapters.sip import header as hdr
from adapters.sip.codec import Request, Response
from canonical.errors import ParseError

_HASHES: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
    "SHA-512-256": lambda data: hashlib.new("sha512_256", data).hexdigest(),
}
#: Strongest first (RFC 8760 §2.4: a UAC uses the topmost header it supports; servers list
#: the preferred one first, and we prefer strength when several are acceptable).
PREFERENCE = ("SHA-512-256", "SHA-256", "MD5")


def supported(algorithm: str) -> bool:
    """True for MD5, SHA-256, SHA-512-256 and their ``-sess`` variants (case-insensitive)."""
    base = algorithm.upper().removesuffix("-SESS")
    return base in _HASHES


def _h(algorithm: str, text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return _HASHES[algorithm.upper().removesuffix("-SESS")](data)


def response_value(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None,
    nc: str,
    cnonce: str,
    body: bytes = b"",
) -> str:
    """The ``response`` of RFC 7616 §3.4.1 (and the RFC 2069 form when ``qop`` is None)."""
    ha1 = _h(algorithm, f"{username}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = _h(algorithm, f"{ha1}:{nonce}:{cnonce}")
    if qop == "auth-int":
        ha2 = _h(algorithm, f"{method}:{uri}:{_h(algorithm, body)}")
    else:
        ha2 = _h(algorithm, f"{method}:{uri}")
    if qop is None:
        return _h(algorithm, f"{ha1}:{nonce}:{ha2}")
    return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


@dataclass(frozen=True, slots=True)
class Credential:
    """A username and password for ``realm`` (None: any realm)."""

    username: str
    password: str
    realm: str | None = None


@dataclass(frozen=True, slots=True)
class Challenge:
    """One Digest challenge read from a 401/407 (RFC 7616 §3.3)."""

    header: str  # "WWW-Authenticate" or "Proxy-Authenticate"
    realm: str
    nonce: str
    algorithm: str
    qop: tuple[str, ...]
    opaque: str | None
    stale: bool

    @property
    def answer_header(self) -> str:
        return "Authorization" if self.header == "WWW-Authenticate" else "Proxy-Authorization"


def challenges(response: Response) -> list[Challenge]:
    """The Digest challenges of a 401/407 whose algorithm we support, strongest first."""
    name = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
    found: list[Challenge] = []
    for value in response.get_all(name):
        try:
            auth = hdr.parse_auth(value)
        except ParseError:
            continue
        if auth.scheme.lower() != "digest":
            continue
        algorithm = (auth.get("algorithm") or "MD5").upper()
        realm, nonce = auth.get("realm"), auth.get("nonce")
        if realm is None or nonce is None or not supported(algorithm):
            continue
        qop = tuple(q.strip().lower() for q in (auth.get("qop") or "").split(",") if q.strip())
        found.append(
            Challenge(
                header=name,
                realm=realm,
                nonce=nonce,
                algorithm=algorithm,
                qop=qop,
                opaque=auth.get("opaque"),
                stale=(auth.get("stale") or "").lower() == "true",
            )
        )
    rank = {a: i for i, a in enumerate(PREFERENCE)}
    found.sort(key=lambda c: rank.get(c.algorithm.removesuffix("-SESS"), len(rank)))
    return found


def authorization(
    challenge: Challenge,
    credential: Credential,
    *,
    method: str,
    uri: str,
    cnonce: str,
    nc: int = 1,
    body: bytes = b"",
) -> str:
    """The Authorization / Proxy-Authorization value answering ``challenge`` (§3.4)."""
    qop: str | None = None
    if "auth" in challenge.qop:
        qop = "auth"
    elif "auth-int" in challenge.qop:
        qop = "auth-int"
    nc_text = f"{nc:08x}"
    resp = response_value(
        algorithm=challenge.algorithm,
        username=credential.username,
        realm=challenge.realm,
        password=credential.password,
        method=method,
        uri=uri,
        nonce=challenge.nonce,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce,
        body=body,
    )
    params: list[tuple[str, str, bool]] = [
        ("username", credential.username, True),
        ("realm", challenge.realm, True),
        ("nonce", challenge.nonce, True),
        ("uri", uri, True),
        ("response", resp, True),
        ("algorithm", challenge.algorithm, False),
    ]
    if challenge.opaque is not None:
        params.append(("opaque", challenge.opaque, True))
    if qop is not None:
        params += [("qop", qop, False), ("nc", nc_text, False), ("cnonce", cnonce, True)]
    return hdr.format_auth("Digest", params)


@dataclass(slots=True)
class DigestClient:
    """Answers challenges with the configured credentials (RFC 3261 §22.2-22.3).

    ``answer(request, response, cnonce)`` returns the request to resend (same Call-ID,
    CSeq + 1 is the caller's job, §22.2) with the credentials added, or None when there
    is nothing to answer with (no matching credential, unsupported algorithm, or the
    same nonce was already refused and is not stale).
    """

    credentials: Sequence[Credential]
    _counts: dict[str, int] = field(default_factory=dict)

    def credential_for(self, realm: str) -> Credential | None:
        exact = [c for c in self.credentials if c.realm == realm]
        if exact:
            return exact[0]
        wild = [c for c in self.credentials if c.realm is None]
        return wild[0] if wild else None

    def answer(
        self,
        request: Request,
        response: Response,
        *,
        cnonce: str,
        previous: Request | None = None,
    ) -> list[tuple[str, str]] | None:
        """Header lines (name, value) to add to the re-sent request, or None."""
        found = challenges(response)
        if not found:
            return None
        answered: list[tuple[str, str]] = []
        realms: set[str] = set()
        for challenge in found:
            if challenge.realm in realms:
                continue  # one answer per realm: the strongest (RFC 8760 §2.4)
            credential = self.credential_for(challenge.realm)
            if credential is None:
                continue
            if previous is not None and not challenge.stale and _already_tried(previous, challenge):
                return None  # the server refused these credentials (§22.2: do not loop)
            nc = self._counts.get(challenge.nonce, 0) + 1
            self._counts[challenge.nonce] = nc
            if len(self._counts) > 1024:
                self._counts.pop(next(iter(self._counts)))
            value = authorization(
                challenge,
                credential,
                method=request.method,
                uri=request.uri,
                cnonce=cnonce,
                nc=nc,
                body=request.body,
            )
            answered.append((challenge.answer_header, value))
            realms.add(challenge.realm)
        return answered or None


def _already_tried(previous: Request, challenge: Challenge) -> bool:
    for value in previous.get_all(challenge.answer_header):
        try:
            auth = hdr.parse_auth(value)
        except ParseError:
            continue
        if auth.get("realm") == challenge.realm and auth.get("nonce") == challenge.nonce:
            return True
    return False


# ------------------------------------------------------------------------------- server


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of checking a request's credentials."""

    ok: bool
    username: str | None = None
    stale: bool = False
    detail: str = ""


@dataclass(slots=True)
class DigestServer:
    """Challenges and checks inbound requests (RFC 3261 §22.1-22.4, RFC 7616 §3.3-3.5).

    ``users`` maps usernames to passwords; ``algorithms`` are offered in order, one
    challenge header each (RFC 8760 §2.4). Nonces are ``base64(time || HMAC(secret,
    time || realm))`` and live ``nonce_ttl`` seconds.
    """

    realm: str
    secret: bytes
    users: Mapping[str, str]
    algorithms: Sequence[str] = ("SHA-256", "MD5")
    nonce_ttl: float = 300.0
    proxy: bool = False
    _seen: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def challenge_header(self) -> str:
        return "Proxy-Authenticate" if self.proxy else "WWW-Authenticate"

    @property
    def credentials_header(self) -> str:
        return "Proxy-Authorization" if self.proxy else "Authorization"

    def nonce(self, now: float) -> str:
        stamp = struct.pack(">d", now)
        mac = hmac.new(self.secret, stamp + self.realm.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(stamp + mac).decode("ascii").rstrip("=")

    def _nonce_time(self, nonce: str) -> float | None:
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except ValueError:
            return None
        if len(raw) != 24:
            return None
        stamp, mac = raw[:8], raw[8:]
        good = hmac.new(self.secret, stamp + self.realm.encode(), hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(mac, good):
            return None
        return float(struct.unpack(">d", stamp)[0])

    def challenge(self, now: float, *, stale: bool = False) -> list[tuple[str, str]]:
        """Header lines for a 401/407: one challenge per offered algorithm."""
        nonce = self.nonce(now)
        out: list[tuple[str, str]] = []
        for algorithm in self.algorithms:
            params: list[tuple[str, str, bool]] = [
                ("realm", self.realm, True),
                ("nonce", nonce, True),
                ("algorithm", algorithm, False),
                ("qop", "auth", True),
            ]
            if stale:
                params.append(("stale", "true", False))
            out.append((self.challenge_header, hdr.format_auth("Digest", params)))
        return out

    def verify(self, request: Request, now: float) -> Verdict:
        """Check the request's credentials for our realm."""
        for value in request.get_all(self.credentials_header):
            try:
                auth = hdr.parse_auth(value)
            except ParseError as exc:
                return Verdict(False, detail=f"malformed credentials: {exc}")
            if auth.scheme.lower() != "digest" or auth.get("realm") != self.realm:
                continue
            username, nonce, uri, resp = (
                auth.get("username"),
                auth.get("nonce"),
                auth.get("uri"),
                auth.get("response"),
            )
            if not (username and nonce and uri and resp):
                return Verdict(False, detail="credentials lack username/nonce/uri/response")
            algorithm = (auth.get("algorithm") or "MD5").upper()
            if algorithm not in [a.upper() for a in self.algorithms]:
                return Verdict(False, username, detail=f"algorithm {algorithm} not offered")
            issued = self._nonce_time(nonce)
            if issued is None:
                return Verdict(False, username, detail="nonce was not issued here")
            password = self.users.get(username)
            if password is None:
                return Verdict(False, username, detail="unknown user")
            qop = auth.get("qop")
            nc = auth.get("nc") or ""
            cnonce = auth.get("cnonce") or ""
            expected = response_value(
                algorithm=algorithm,
                username=username,
                realm=self.realm,
                password=password,
                method=request.method,
                uri=uri,
                nonce=nonce,
                qop=qop,
                nc=nc,
                cnonce=cnonce,
                body=request.body,
            )
            if not hmac.compare_digest(expected, resp.lower()):
                return Verdict(False, username, detail="wrong password or digest")
            if now - issued > self.nonce_ttl:
                return Verdict(False, username, stale=True, detail="nonce expired")
            if qop is not None:
                seen_key = (nonce, nc)
                if seen_key in self._seen:
                    return Verdict(False, username, stale=True, detail="nonce count replayed")
                self._seen[seen_key] = now
                if len(self._seen) > 10_000:
                    cutoff = now - self.nonce_ttl
                    self._seen = {k: t for k, t in self._seen.items() if t >= cutoff}
            return Verdict(True, username)
        return Verdict(False, detail="no credentials for this realm")
