"""The vectors shipped inside the package are intact, complete and found through
importlib.resources (canonical.vectorset), so the conformance kit and the demo can rely
on them from an installed package."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from canonical import vectorset

#: The team's reference copy of the vectors (``/work/shared/vectors`` next to the
#: checkout); the shipped tree must equal it wherever that folder exists.
SHARED_VECTORS = Path(
    os.environ.get(
        "CPIMGW_SHARED_VECTORS",
        Path(__file__).resolve().parents[3] / "shared" / "vectors",
    )
)


def _every_vector() -> list[vectorset.Vector]:
    return [*vectorset.valid_vectors(), *vectorset.invalid_vectors()]


@pytest.mark.parametrize("vector", _every_vector(), ids=lambda v: v.name)
def test_shipped_vector_has_the_manifest_hash_and_size(vector: vectorset.Vector) -> None:
    data = vector.read_bytes()
    assert hashlib.sha256(data).hexdigest() == vector.sha256
    assert len(data) == vector.entry["size"]
    assert vector.intact()


@pytest.mark.parametrize("vector", vectorset.valid_vectors(), ids=lambda v: v.name)
def test_shipped_valid_vector_body_has_the_manifest_hash(vector: vectorset.Vector) -> None:
    data = vector.read_bytes()
    body = data[vector.entry["body_offset"] :]
    assert len(body) == vector.entry["body_length"]
    assert hashlib.sha256(body).hexdigest() == vector.entry["body_sha256"]


def test_manifest_lists_exactly_the_files_in_the_cpim_folders() -> None:
    listed = {v.relpath for v in _every_vector()}
    cpim_dir = vectorset.root().joinpath("cpim")
    present = {
        f"{folder}/{item.name}"
        for folder in ("valid", "invalid")
        for item in cpim_dir.joinpath(folder).iterdir()
        if item.name.endswith(".cpim")
    }
    assert listed == present


def test_vectors_are_found_inside_the_installed_canonical_package() -> None:
    import canonical  # noqa: PLC0415 - the package whose data we look for

    package_dir = Path(canonical.__file__).resolve().parent
    assert Path(str(vectorset.root())).resolve() == package_dir / "vectors"
    assert vectorset.load_manifest()["valid"][0]["file"] == vectorset.valid_vectors()[0].relpath


def test_invalid_vectors_accept_the_codes_reasons_md_allows() -> None:
    i003 = vectorset.vector("i003")
    assert i003.expected_code == "NO_BLANK_LINE"
    assert i003.accepted_codes == {"NO_BLANK_LINE", "ENTITY_NO_CONTENT_TYPE"}
    i005 = vectorset.vector("i005-header-without-colon.cpim")
    assert i005.accepted_codes == {"NO_COLON"}
    assert all(v.accepted_codes == frozenset() for v in vectorset.valid_vectors())


def test_profile_vectors_name_their_profile() -> None:
    profiles = {v.name: v.profile for v in vectorset.invalid_vectors() if v.profile}
    assert profiles == {
        "i027-duplicate-from-msrp.cpim": "msrp",
        "i032-missing-to-msrp.cpim": "msrp",
    }


def test_unknown_vector_name_raises_key_error() -> None:
    with pytest.raises(KeyError, match="no such message/cpim vector"):
        vectorset.vector("999")


def test_signed_vectors_and_certificate_are_listed() -> None:
    names = [f.name for f in vectorset.signed_files()]
    assert "s01-multipart-signed.mime" in names
    assert all(name.endswith((".mime", ".xml")) for name in names)
    assert vectorset.signer_certificate().startswith(b"-----BEGIN CERTIFICATE-----")


@pytest.mark.skipif(not SHARED_VECTORS.is_dir(), reason=f"{SHARED_VECTORS} is not here")
def test_shipped_tree_equals_the_shared_vectors() -> None:
    shipped = dict(vectorset.walk())
    shared = {
        path.relative_to(SHARED_VECTORS).as_posix(): path.read_bytes()
        for path in sorted(SHARED_VECTORS.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert sorted(shipped) == sorted(shared)
    changed = [name for name in shipped if shipped[name] != shared[name]]
    assert changed == []
