"""The OpenAPI document: one document served and shipped in docs/, describing exactly the
routes the app has, with the reasons and statuses the mapping uses."""

from __future__ import annotations

from pathlib import Path

import schemathesis
import yaml

from adapters.contract import AdapterContext
from adapters.cpim.adapter import CpimHttpAdapter
from adapters.cpim.api import openapi_text
from adapters.cpim.mapping import HTTP_STATUS
from canonical.errors import Reason

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = yaml.safe_load(openapi_text())


def test_docs_copy_is_the_served_document() -> None:
    assert (ROOT / "docs" / "openapi.yaml").read_text("utf-8") == openapi_text()


def test_document_is_valid_openapi() -> None:
    schema = schemathesis.openapi.from_dict(DOCUMENT)
    assert {op.label for op in (r.ok() for r in schema.get_all_operations())} >= {
        "POST /v1/messages",
        "GET /v1/status/{id}",
    }


def test_document_describes_exactly_the_routes_of_the_app(tmp_path: Path) -> None:
    config = CpimHttpAdapter.sample().config.model_copy(update={"database": tmp_path / "x.db"})
    app = CpimHttpAdapter("api", config, AdapterContext()).api.app()
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {
        (method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item
    }
    assert served == documented


def test_problem_reasons_are_the_reason_list() -> None:
    enum = DOCUMENT["components"]["schemas"]["Problem"]["properties"]["reason"]["enum"]
    assert sorted(enum) == sorted(r.value for r in Reason)


def test_message_operation_documents_every_refusal_it_can_give() -> None:
    documented = {int(code) for code in DOCUMENT["paths"]["/v1/messages"]["post"]["responses"]}
    reachable = {HTTP_STATUS[r] for r in Reason} - {409, 500, 504}  # no conflict/ours/timeout
    assert reachable <= documented
