"""Every route the docs name exists: README.md, docs/service.md and docs/index-artifacts.md against the app's own
OpenAPI schema (built by `create_app`, no server started).

A route mention is `METHOD /path` (METHOD one of GET, POST, PUT, PATCH, DELETE) anywhere in the text, or a
`curl` command line in the README's examples (its method from `-X`, else POST when it sends a form or a body,
else GET). A `{...}` or `<...>` segment of a mentioned path stands for any path parameter; a literal segment
(`/images/42`) matches a parameter segment of the schema too; a `*` segment stands for the rest of the path;
query strings are ignored. The few routes served outside the schema (the OpenAPI UI, the schema itself, the page
and its static files, a deprecated alias) are allowed by name, and checked to be served by the app.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.routing import Match

from service.api.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/service.md", "docs/index-artifacts.md")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

PATH = r"/[A-Za-z0-9_{}<>.*/-]*"
MENTION = re.compile(rf"(?<![A-Za-z])({'|'.join(METHODS)}) ({PATH})")
URL = re.compile(rf"https?://[^/\s'\"]+({PATH})")
CURL_METHOD = re.compile(r"(?:-X|--request)\s+([A-Z]+)")
CURL_SENDS = re.compile(r"(?:^|\s)(?:-F|-d|--form|--data[a-z-]*)\s")
# served by FastAPI or the app but left out of the schema: the OpenAPI UI and document, the page, the deprecated
# alias of POST /jobs/{job_id}/cancel; and the page's files under /static/
OUTSIDE_SCHEMA = {("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/")}
STATIC = ("GET", "/static/", "/static/app.js")  # method, prefix, a file that is there


def clean(path: str) -> str:
    """The path part of a mention: no query string, no trailing punctuation of the sentence, no trailing slash."""
    path = path.split("?", 1)[0].rstrip(".,;:)`'\"")
    return path.rstrip("/") or "/"


def segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


def is_param(segment: str) -> bool:
    return (segment.startswith("{") and segment.endswith("}")) or (segment.startswith("<") and segment.endswith(">"))


def matches(mentioned: str, route: str) -> bool:
    """Whether a documented path names the route template `route` (see the module docstring)."""
    doc, tmpl = segments(mentioned), segments(route)
    if "*" in doc:
        star = doc.index("*")
        return doc[star + 1:] == [] and len(tmpl) > star and all(
            matches_segment(d, t) for d, t in zip(doc[:star], tmpl[:star], strict=True))
    return len(doc) == len(tmpl) and all(matches_segment(d, t) for d, t in zip(doc, tmpl, strict=True))


def matches_segment(doc: str, tmpl: str) -> bool:
    if is_param(tmpl):
        return True  # a parameter of the route: any name, or a literal value (/images/42)
    return not is_param(doc) and doc == tmpl


def curl_mentions(text: str) -> list[tuple[str, str, str]]:
    """(method, path, line) of each URL in a curl command, continuation lines joined."""
    found = []
    for command in re.sub(r"\\\n\s*", " ", text).splitlines():
        if not re.search(r"(?:^|[\s`])curl\s", command):
            continue
        command = command.split(" #", 1)[0]  # an example's trailing comment
        explicit = CURL_METHOD.search(command)
        method = explicit.group(1) if explicit else "POST" if CURL_SENDS.search(command) else "GET"
        found += [(method, clean(m.group(1)), command.strip()) for m in URL.finditer(command)]
    return found


def mentions(text: str) -> list[tuple[str, str, str]]:
    """(method, path, context) of every route the text names."""
    found = [(m.group(1), clean(m.group(2)), m.group(0)) for m in MENTION.finditer(text)]
    return found + curl_mentions(text)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs-routes")
    (root / "images").mkdir()
    (root / "store").mkdir()
    return create_app(Settings(_env_file=None, collection_root=root / "images", artifacts_dir=root / "store"))


@pytest.fixture(scope="module")
def documented(app) -> set[tuple[str, str]]:
    """(method, path template) of every operation in the app's OpenAPI schema."""
    return {(method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item
            if method.upper() in METHODS}


def served(app, method: str, path: str) -> bool:
    """Whether the app routes `method path` to a handler (a parameter segment filled with a sample value)."""
    concrete = "/" + "/".join("x1" if is_param(s) else s for s in segments(path))
    scope = {"type": "http", "method": method, "path": concrete, "root_path": "", "headers": [], "query_string": b""}
    return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)


def missing(found: list[tuple[str, str, str]], documented: set[tuple[str, str]]) -> list[str]:
    """The mentions that name no route of the schema, nor one of those served outside it."""
    bad = []
    for method, path, context in found:
        if method == STATIC[0] and path.startswith(STATIC[1]):
            continue
        if not any(m == method and matches(path, route) for m, route in documented | OUTSIDE_SCHEMA):
            bad.append(f"{method} {path}  ({context})")
    return bad


def test_the_routes_outside_the_schema_are_served(app, documented):
    for method, path in OUTSIDE_SCHEMA | {(STATIC[0], STATIC[2])}:
        assert served(app, method, path), f"{method} {path} is allowed in the docs but the app does not serve it"
        assert (method, path) not in documented, f"{method} {path} is in the schema now: drop it from OUTSIDE_SCHEMA"
    assert not served(app, "PUT", "/jobs/x1") and not served(app, "GET", "/nothing")


@pytest.mark.parametrize("doc", DOCS)
def test_every_route_the_doc_names_exists(doc, documented):
    found = mentions((ROOT / doc).read_text(encoding="utf-8"))
    assert found, f"{doc} names no route: the parser no longer reads it"
    bad = missing(found, documented)
    assert not bad, f"{doc} names routes the app does not serve:\n" + "\n".join(bad)


def test_the_check_catches_a_wrong_route(documented):
    text = """`POST /versions/{version}/rollback` carries adds; GET /images/{id}/similar?k=10 works.
curl -H "X-API-Key: $KEY" -X POST http://127.0.0.1:8000/jobs/<job_id>/restart   # no such route
curl -F file=@q.jpg 'http://127.0.0.1:8000/search?k=10'
curl http://127.0.0.1:8000/search
`POST /jobs/*` and POST /jobs/{id}/cancel exist, DELETE /jobs/{id} and PUT /jobs/{id} do not.
"""
    bad = missing(mentions(text), documented)
    assert [b.split("  (")[0] for b in bad] == ["POST /versions/{version}/rollback", "DELETE /jobs/{id}",
                                                "PUT /jobs/{id}", "POST /jobs/<job_id>/restart", "GET /search"]
