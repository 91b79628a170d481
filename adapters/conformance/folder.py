"""A vector folder as conformance cases.

The layout is the one of ``canonical/vectors/`` (see its README), extended with two
optional folders a user may add:

```
cpim/manifest.json          expected parses (titles and RFC rules are used here)
cpim/valid/*.cpim           Content-type: Message/CPIM entity; L1 cases (RFC 3862)
cpim/invalid/*.cpim         malformed objects: refused with a clear error or relayed untouched
signed/*.mime               MIME entities (multipart/signed, pkcs7-mime): L1 + L3 cases
signed/*.pem                trust roots for the signed cases of this folder
signed/*.xml                RFC 3923 <e2e/> stanzas: native cases for adapters of kind "xmpp"
native/KIND/*               wire messages of adapters of kind KIND: L2 cases
cases/*.json                cases in the kit's own format (docs/conformance.md)
```

Every file becomes a case; nothing in a folder is skipped silently (files the layout does
not know are reported by :func:`unknown_files`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.conformance.case import (
    Case,
    CaseFormatError,
    Check,
    Expect,
    Input,
    load_case_folder,
    section_of,
)
from adapters.contract import Capability
from canonical.envelope import CPIM

#: Files a folder may hold that are documentation, not vectors.
_DOCS = {"README.md", "REASONS.md", "manifest.json"}


def default_folder() -> Path:
    """The vectors shipped with cpimgw (``canonical/vectors``, found by
    :func:`canonical.vectorset.root`)."""
    from canonical.vectorset import root  # noqa: PLC0415 - only when the suite is collected

    folder = Path(str(root()))
    if not folder.is_dir():
        raise CaseFormatError(
            "the shipped vectors are not a folder on disk (zipped install?)",
            source=str(folder),
        )
    return folder.resolve()


def split_entity(data: bytes) -> tuple[bytes, bytes]:
    """A MIME entity's header block and its body, split at the first blank line.

    RFC 2045 §3 / RFC 3862 §2: the header block ends with an empty line. A bare-LF file
    (a malformed vector) is split at its first empty LF line; without any empty line the
    whole input is the header block.
    """
    for blank in (b"\r\n\r\n", b"\n\n"):
        head, sep, rest = data.partition(blank)
        if sep:
            return head + sep, rest
    return data, b""


def header_value(block: bytes, name: str) -> str | None:
    """The value of the first header ``name`` (case-insensitive, RFC 2045) in a block."""
    wanted = name.lower().encode("ascii") + b":"
    for line in block.replace(b"\r\n", b"\n").split(b"\n"):
        if line.lower().startswith(wanted):
            return line[len(wanted) :].strip().decode("utf-8", "replace")
    return None


def cpim_features(body_form: bytes) -> frozenset[Capability]:
    """The capabilities carrying this CPIM object exactly needs (RFC 3862 §3-4)."""
    caps = {Capability.MESSAGE, Capability.CPIM_BODY}
    head, rest = split_entity(body_form)
    subjects = [line for line in head.split(b"\r\n") if line.startswith((b"Subject:", b"Subject;"))]
    if subjects:
        caps.add(Capability.SUBJECT)
    if sum(1 for s in subjects if b";lang=" in s.partition(b" ")[0]) >= 1 and len(subjects) > 1:
        caps.add(Capability.SUBJECT_LANGUAGES)
    if any(byte >= 0x80 for byte in body_form):
        caps.add(Capability.NON_ASCII)
    entity_head, _ = split_entity(rest)
    content_type = (header_value(entity_head, "Content-Type") or "").lower()
    media_type = content_type.split(";")[0].strip()
    textual = media_type.startswith(("text/", "message/", "multipart/"))
    if media_type and not textual and not media_type.endswith("+xml"):
        caps.add(Capability.BINARY_BODY)
    return frozenset(caps)


@dataclass(frozen=True, slots=True)
class VectorFolder:
    """One folder with the vector layout; :meth:`cases` reads it."""

    path: Path

    @property
    def label(self) -> str:
        return str(self.path)

    def cases(self) -> list[Case]:
        """Every case of the folder, in a stable order."""
        if not self.path.is_dir():
            raise CaseFormatError("not a folder", source=str(self.path))
        return [
            *self._valid_cpim(),
            *self._invalid_cpim(),
            *self._signed(),
            *self._native(),
            *(load_case_folder(self.path / "cases") if (self.path / "cases").is_dir() else []),
        ]

    def _manifest(self) -> dict[str, dict[str, Any]]:
        path = self.path / "cpim" / "manifest.json"
        if not path.exists():
            return {}
        try:
            document = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise CaseFormatError(f"unreadable manifest: {exc}", source=str(path)) from exc
        entries: dict[str, dict[str, Any]] = {}
        for group in ("valid", "invalid"):
            for entry in document.get(group, []):
                entries[str(entry["file"])] = entry
        return entries

    def _valid_cpim(self) -> list[Case]:
        manifest = self._manifest()
        cases = []
        for path in sorted((self.path / "cpim" / "valid").glob("*.cpim")):
            entry = manifest.get(f"valid/{path.name}", {})
            _, body = split_entity(path.read_bytes())
            cases.append(
                Case(
                    id=f"vector/cpim/{path.stem}",
                    section=section_of(entry.get("rules", ["3862 s.2.2"])),
                    requirement=(
                        f"{entry.get('title', path.stem)}: the object crosses byte for byte (L1)."
                    ),
                    capabilities=cpim_features(body),
                    check=Check.CANONICAL,
                    expect=Expect.IDENTICAL,
                    input=Input(form="payload", content_type=CPIM, data=body),
                    source=str(path),
                )
            )
        return cases

    def _invalid_cpim(self) -> list[Case]:
        manifest = self._manifest()
        cases = []
        for path in sorted((self.path / "cpim" / "invalid").glob("*.cpim")):
            entry = manifest.get(f"invalid/{path.name}", {})
            _, body = split_entity(path.read_bytes())
            code = entry.get("expected_code")
            kind = entry.get("kind")
            detail = f" ({kind}, {code})" if code else ""
            cases.append(
                Case(
                    id=f"vector/cpim/{path.stem}",
                    section=section_of(entry.get("rules", ["3862 s.3.6"])),
                    requirement=(
                        f"{entry.get('title', path.stem)}{detail}: refused with a clear error, "
                        "or relayed untouched, never altered silently."
                    ),
                    capabilities=frozenset({Capability.MESSAGE}),
                    check=Check.MALFORMED_CANONICAL,
                    expect=Expect.REFUSED_OR_UNTOUCHED,
                    input=Input(
                        form="payload",
                        content_type=CPIM,
                        data=body,
                        fields={"expected_code": str(code)} if code else {},
                    ),
                    source=str(path),
                )
            )
        return cases

    def _signed(self) -> list[Case]:
        folder = self.path / "signed"
        trust = tuple(sorted(folder.glob("*.pem")))
        cases = []
        for path in sorted(folder.glob("*.mime")):
            head, body = split_entity(path.read_bytes())
            content_type = header_value(head, "Content-Type")
            if content_type is None:
                raise CaseFormatError("no Content-Type header", source=str(path))
            cases.append(
                Case(
                    id=f"vector/signed/{path.stem}",
                    section="RFC 3862 §5.2; RFC 8551 §3.5; RFC 1847 §2.1",
                    requirement=(
                        "A signed object crosses byte for byte and its signature verdict "
                        "(valid, or invalid for a tampered object) is the same after every "
                        "hop (L1, L3)."
                    ),
                    capabilities=frozenset({Capability.MESSAGE, Capability.SIGNED_BODY}),
                    check=Check.SIGNED,
                    expect=Expect.SAME_VERDICT,
                    input=Input(form="payload", content_type=content_type, data=body),
                    trust=trust,
                    source=str(path),
                )
            )
        cases.extend(
            Case(
                id=f"vector/signed/{path.stem}",
                section="RFC 3923 §3, §6.4; RFC 3862 §5.2",
                requirement=(
                    "An RFC 3923 <e2e/> stanza maps to a signed payload that verifies (L3) "
                    "and back to an equal stanza (L2)."
                ),
                capabilities=frozenset({Capability.MESSAGE, Capability.SIGNED_BODY}),
                check=Check.NATIVE,
                expect=Expect.VERIFIES,
                input=Input(form="native", data=path.read_bytes()),
                kind="xmpp",
                trust=trust,
                source=str(path),
            )
            for path in sorted(folder.glob("*.xml"))
        )
        return cases

    def _native(self) -> list[Case]:
        cases = []
        root = self.path / "native"
        # a signed native message is checked against the folder's trust roots: its
        # verdict must stay the same after every hop of a cross-protocol journey
        trust = tuple(sorted((self.path / "signed").glob("*.pem")))
        for kind_dir in sorted(p for p in root.glob("*") if p.is_dir()):
            for path in sorted(p for p in kind_dir.iterdir() if p.is_file()):
                if path.name in _DOCS or path.suffix == ".md":
                    continue
                cases.append(
                    Case(
                        id=f"vector/native/{kind_dir.name}/{path.stem}",
                        section="DESIGN.md L2",
                        requirement=(
                            "A native message maps to canonical and back to an equal message, "
                            "every field that cannot be carried reported as a loss (L2)."
                        ),
                        capabilities=frozenset({Capability.MESSAGE}),
                        check=Check.NATIVE,
                        expect=Expect.EQUAL,
                        input=Input(form="native", data=path.read_bytes()),
                        kind=kind_dir.name,
                        trust=trust,
                        source=str(path),
                    )
                )
        return cases

    def unknown_files(self) -> list[Path]:
        """Files the layout does not define (so a user sees what was not read)."""
        known = {"cpim/valid": ".cpim", "cpim/invalid": ".cpim", "cases": ".json"}
        unknown = []
        for path in sorted(p for p in self.path.rglob("*") if p.is_file()):
            rel = path.relative_to(self.path)
            parent = rel.parent.as_posix()
            if path.name in _DOCS or rel.parts[0] == "native":
                continue
            if parent == "signed" and path.suffix in {".mime", ".pem", ".xml"}:
                continue
            if known.get(parent) == path.suffix:
                continue
            unknown.append(path)
        return unknown
