"""The test vectors shipped inside the package (``canonical/vectors/``), found through
:mod:`importlib.resources` so they work from an installed wheel as well as a checkout.

The conformance kit and the demo read them from here; the expected parse of each
message/cpim vector is in ``cpim/manifest.json`` (the oracle), and the modes each invalid
vector must fail in are in ``README.md`` ("Strict and lenient modes") and
``cpim/invalid/REASONS.md``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

__all__ = [
    "Vector",
    "invalid_vectors",
    "load_manifest",
    "root",
    "signed_files",
    "signer_certificate",
    "valid_vectors",
    "vector",
    "walk",
]

# REASONS.md says, for a vector that may fail with a second code: "`CODE` is also acceptable".
_ALSO_ACCEPTABLE = re.compile(r"^- `([^`]+)`.*?`([A-Z0-9_]+)` is also acceptable", re.M)


@dataclass(frozen=True, slots=True)
class Vector:
    """One message/cpim vector and what the manifest says about it.

    ``relpath`` is relative to the ``cpim`` folder (``valid/001-minimal.cpim``); ``entry``
    is the manifest entry as it is. For an invalid vector, ``expected_code`` is the code
    in its row and ``accepted_codes`` every code the README accepts for it; ``profile`` is
    the profile it fails under (``"msrp"``) or None.
    """

    relpath: str
    entry: Mapping[str, Any] = field(repr=False)
    accepted_codes: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        """The file name (``001-minimal.cpim``)."""
        return self.relpath.rsplit("/", 1)[-1]

    @property
    def valid(self) -> bool:
        """True for a file in ``valid/``."""
        return bool(self.entry["valid"])

    @property
    def expected_code(self) -> str | None:
        """The error code an invalid vector fails with (None for a valid one)."""
        code = self.entry.get("expected_code")
        return str(code) if code is not None else None

    @property
    def kind(self) -> str | None:
        """syntax, structure, generator, strict-only, profile or policy (invalid only)."""
        kind = self.entry.get("kind")
        return str(kind) if kind is not None else None

    @property
    def profile(self) -> str | None:
        """The application profile an invalid vector fails under (``msrp``), or None."""
        profile = self.entry.get("profile")
        return str(profile) if profile is not None else None

    @property
    def sha256(self) -> str:
        """The SHA-256 of the file recorded by the manifest."""
        return str(self.entry["sha256"])

    @property
    def path(self) -> Traversable:
        """The file inside the package."""
        return _cpim_dir().joinpath(*self.relpath.split("/"))

    def read_bytes(self) -> bytes:
        """The vector's bytes, exactly as shipped."""
        return self.path.read_bytes()

    def intact(self) -> bool:
        """True when the shipped bytes still have the manifest's hash."""
        return hashlib.sha256(self.read_bytes()).hexdigest() == self.sha256


def root() -> Traversable:
    """The ``vectors`` folder inside the installed ``canonical`` package."""
    return files("canonical").joinpath("vectors")


def _cpim_dir() -> Traversable:
    return root().joinpath("cpim")


@cache
def load_manifest() -> Mapping[str, Any]:
    """``cpim/manifest.json`` as data (read once)."""
    data: Mapping[str, Any] = json.loads(_cpim_dir().joinpath("manifest.json").read_text("utf-8"))
    return data


@cache
def _also_acceptable() -> Mapping[str, frozenset[str]]:
    text = _cpim_dir().joinpath("invalid", "REASONS.md").read_text("utf-8")
    extra: dict[str, set[str]] = {}
    for name, code in _ALSO_ACCEPTABLE.findall(text):
        extra.setdefault(name, set()).add(code)
    return {name: frozenset(codes) for name, codes in extra.items()}


def _vectors(section: str) -> tuple[Vector, ...]:
    extra = _also_acceptable()
    out = []
    for entry in load_manifest()[section]:
        relpath = str(entry["file"])
        codes: frozenset[str] = frozenset()
        if not entry["valid"]:
            codes = frozenset({str(entry["expected_code"])}) | extra.get(
                relpath.rsplit("/", 1)[-1], frozenset()
            )
        out.append(Vector(relpath, entry, codes))
    return tuple(out)


@cache
def valid_vectors() -> tuple[Vector, ...]:
    """Every vector in ``cpim/valid/``, in manifest order."""
    return _vectors("valid")


@cache
def invalid_vectors() -> tuple[Vector, ...]:
    """Every vector in ``cpim/invalid/``, in manifest order."""
    return _vectors("invalid")


def vector(name: str) -> Vector:
    """A vector by file name (``001-minimal.cpim``) or by its number prefix (``001``,
    ``i020``)."""
    for v in valid_vectors() + invalid_vectors():
        if v.name == name or v.name.split("-", 1)[0] == name:
            return v
    raise KeyError(f"no such message/cpim vector: {name!r}")


def signed_files() -> tuple[Traversable, ...]:
    """The S/MIME objects and XMPP carriages in ``signed/`` (``.mime`` and ``.xml``)."""
    folder = root().joinpath("signed")
    return tuple(
        sorted(
            (f for f in folder.iterdir() if f.name.endswith((".mime", ".xml"))),
            key=lambda f: f.name,
        )
    )


def signer_certificate() -> bytes:
    """``signed/test-signer-cert.pem``, which verifies the signed vectors."""
    return root().joinpath("signed", "test-signer-cert.pem").read_bytes()


def walk(folder: Traversable | None = None, prefix: str = "") -> Iterator[tuple[str, bytes]]:
    """Every shipped vector file as ``(relative path, bytes)``, sorted (for comparisons
    with another copy of the vector tree)."""
    base = folder if folder is not None else root()
    for item in sorted(base.iterdir(), key=lambda f: f.name):
        if item.name == "__pycache__":
            continue
        rel = f"{prefix}{item.name}"
        if item.is_dir():
            yield from walk(item, rel + "/")
        else:
            yield rel, item.read_bytes()
