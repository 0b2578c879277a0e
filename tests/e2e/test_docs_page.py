"""`/docs`: the API reference rendered on the server, whole and offline."""

from __future__ import annotations

import re
from html import unescape

import aiohttp

from coordinator.api.routes import ROUTES
from tests.e2e.conftest import E2E


async def test_docs_lists_every_operation_and_fetches_nothing(e2e: E2E) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{e2e.url}/openapi.json") as r:
            spec = await r.json()
        async with http.get(f"{e2e.url}/docs") as r:  # public: no key
            assert r.status == 200 and r.content_type == "text/html"
            page = await r.text()
    text = unescape(re.sub(r"<[^>]+>", " ", page))
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert f'id="op-{method}' in page and path in text and op["summary"] in text
            for status in op["responses"]:
                assert status in text
    assert {(r.method, r.path) for r in ROUTES} == {
        (m.upper(), p) for p, item in spec["paths"].items() for m in item}
    for name in spec["components"]["schemas"]:
        assert f'id="schema-{name}"' in page  # every linked schema is on the page
    for ref in re.findall(r'href="#(schema-[^"]+)"', page):
        assert f'id="{ref}"' in page
    # Self-contained: no script, no stylesheet or image from elsewhere, no absolute URL at all.
    assert "<script" not in page.lower()
    assert not re.search(r'(?:src|href)\s*=\s*"?(?:https?:)?//', page)
    assert "@import" not in page and "url(" not in page
