"""A page's upstream links are kept for the cursors before rebasing changes the document
(pipeline.release._copy_links): the copy gives rewrite_links exactly what a deep copy gave."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.fhir import jsoncodec
from middleware.pipeline.cursor import rewrite_links
from middleware.pipeline.release import _copy_links
from middleware.proxy.rewrite import Rebaser

UP = "http://upstream.test/fhir"
GW = "http://gateway.test/fhir"

_URLS = st.sampled_from([f"{UP}/Observation?_getpages=a", f"{UP}?page=2", "http://elsewhere/x", ""])
_SCALARS = st.one_of(st.none(), st.integers(), _URLS, st.sampled_from(["self", "next", "prev"]))
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["url", "relation", "valueUri"]), inner, max_size=3)
    ),
    max_leaves=8,
)
_LINK = st.fixed_dictionaries(
    {},
    optional={"relation": _VALUES, "url": _VALUES, "extension": _VALUES, "id": _VALUES},
)
_LINKS = st.one_of(st.lists(_LINK | _VALUES, max_size=4), _VALUES)


def _released(links: Any) -> Any:
    """What rewrite_links makes of ``links``: each cursor stands for the upstream URL it seals."""
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "link": links}
    rewrite_links(bundle, lambda url: f"cursor({url})", self_url=f"{GW}/Observation")
    return bundle.get("link")


@settings(max_examples=400)
@given(links=_LINKS)
def test_the_links_kept_release_what_a_deep_copy_released(links: Any) -> None:
    """Property: after the document is rebased in place (the upstream base rewritten in every
    link, nested values included), the cursors seal the same upstream URLs as with a deep
    copy, and the same links are dropped."""
    document = jsoncodec.decode(json.dumps({"resourceType": "Bundle", "link": links}).encode())
    deep, kept = copy.deepcopy(document.get("link")), _copy_links(document.get("link"))
    rebaser = Rebaser(UP, GW)
    rebaser.rewrite(document, rebaser.occurrences(jsoncodec.encode(document)))
    assert _released(kept) == _released(deep)


def test_an_upstream_next_link_is_sealed_as_the_upstream_wrote_it() -> None:
    document = {"resourceType": "Bundle", "link": [{"relation": "next", "url": f"{UP}?page=2"}]}
    kept = _copy_links(document["link"])
    Rebaser(UP, GW).rewrite(document, 1)
    assert document["link"] == [{"relation": "next", "url": f"{GW}?page=2"}]
    assert _released(kept)[1] == {"relation": "next", "url": f"cursor({UP}?page=2)"}
