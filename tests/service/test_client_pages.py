"""Task reads when Label Studio caps the page size (found by review, 2026-11-30).

Label Studio 1.23.2 cuts every task listing to ``TASK_API_PAGE_SIZE_MAX`` tasks when that variable
is set (``core/utils/common.py:174``, ``data_manager/api.py:245``), whatever page_size asks. The
client used to take a short page for the last one: with a cap below PAGE_SIZE a cycle trained on
the first page only, and ``get_tasks`` called the unanswered tasks deleted. The session below
answers the two query forms the client sends (an id cursor, and a selection of ids) the way
Label Studio does, with that cap; the integration suite reads the real Label Studio uncapped."""

from __future__ import annotations

import json

import pytest

from ncalr_backend.service.labelstudio import LabelStudioClient

CAP = 3


class Capped:
    def __init__(self, ids):
        self.ids = sorted(ids)
        self.calls = 0

    def request(self, method, url, headers=None, params=None, **kw):
        self.calls += 1
        assert method == "GET" and url.endswith("/api/tasks/")
        query = json.loads(params["query"])
        rows = self.ids
        for f in (query.get("filters") or {}).get("items", []):
            if f["filter"] == "filter:tasks:id" and f["operator"] == "greater":
                rows = [i for i in rows if i > f["value"]]
        sel = query.get("selectedItems")
        if sel is not None and not sel["all"]:
            rows = [i for i in rows if i in set(sel["included"])]
        size = min(int(params["page_size"]), CAP)
        page = rows[(int(params["page"]) - 1) * size:int(params["page"]) * size]
        body = {"tasks": [{"id": i, "data": {}, "annotations": []} for i in page], "total": len(rows)}

        class R:
            status_code = 200
            text = ""

            def json(self):
                return body

            def close(self):
                pass
        return R()


def test_every_task_is_read_when_label_studio_caps_the_page_size():
    ids = list(range(1, 11)) + [40, 41]
    session = Capped(ids)
    c = LabelStudioClient("http://ls.test", "k", session=session)
    assert [t["id"] for t in c.iter_tasks(1, page_size=500)] == ids  # 4 capped pages + the empty one
    assert c.task_ids(1) == ids
    got = c.get_tasks(1, [41, 2, 3, 4, 5, 6, 99, 7], chunk=100)
    assert sorted(t["id"] for t in got) == [2, 3, 4, 5, 6, 7, 41]  # 99 does not exist: only it is missing


def test_a_refused_personal_access_token_is_not_retried_and_a_wrong_url_says_so():
    """Found by review: the refresh error carried no status, so a revoked token was retried for 33
    minutes as if Label Studio were down; a 404 (a URL that is not Label Studio's base) blamed the token."""
    from types import SimpleNamespace

    from ncalr_backend.service.labelstudio import LabelStudioClient, LabelStudioError

    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2ln"

    class Refresh:
        def __init__(self, status):
            self.status = status

        def post(self, url, json=None, timeout=None):
            return SimpleNamespace(status_code=self.status, json=lambda: {})

    for status, retry, says in ((401, False, "refused the personal access token"), (404, False, "base URL"),
                                (503, True, "base URL")):
        c = LabelStudioClient("http://ls.test", jwt, session=Refresh(status))
        assert c.pat
        with pytest.raises(LabelStudioError, match=says) as e:
            c._auth_header()
        assert e.value.status == status and e.value.retryable is retry
