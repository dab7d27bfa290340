"""The README's "start it" demo, run twice on one work folder, against a real Label Studio 1.23.2:
the second run resumes the first (found by review, 2026-11-30: Label Studio keeps the first run's
user and ignores new credentials, so a second run got a 401 and crashed). Own Label Studio data
folder, own backend process."""

from __future__ import annotations

import json

from ncalr_backend.service.demo import LSAdmin, free_port, main


def test_a_second_demo_run_resumes_the_first_with_its_login_project_and_labels(tmp_path, capsys):
    work = tmp_path / "demo"
    ls_port = free_port()
    assert main(["--images", "12", "--ls-port", str(ls_port), "--backend-port", str(free_port()),
                 "--workdir", str(work), "--no-wait"]) == 0
    login = json.loads((work / "demo-login.json").read_text())
    assert (work / "demo-login.json").stat().st_mode & 0o077 == 0  # the login is the owner's alone
    pid = json.loads((work / "demo-project.json").read_text())["project"]
    first = capsys.readouterr().out
    assert login["password"] in first and f"/projects/{pid}/data" in first

    backend_port = free_port()  # another port: the connection must follow it, not be duplicated
    # the first run's Label Studio is stopped; a label made between runs must survive the second
    from ncalr_backend.service.demo import LocalLabelStudio
    ls = LocalLabelStudio(work / "label-studio", port=ls_port, password=login["password"], token=login["token"]).start()
    try:
        admin = LSAdmin(ls.url, ls.token)
        task = admin.tasks(pid)[0]
        admin.annotate(task["id"], 3)
    finally:
        ls.stop()
    assert main(["--images", "12", "--ls-port", str(ls_port), "--backend-port", str(backend_port),
                 "--workdir", str(work), "--no-wait"]) == 0
    second = capsys.readouterr().out
    assert f"/projects/{pid}/data" in second and "resumed" in second and login["password"] in second
    ls = LocalLabelStudio(work / "label-studio", port=ls_port, password=login["password"], token=login["token"]).start()
    try:
        admin = LSAdmin(ls.url, ls.token)
        assert [p["id"] for p in admin.req("GET", "/api/projects/").json()["results"]] == [pid]
        assert admin.project(pid)["task_number"] == 12
        assert any(t["annotations"] for t in admin.tasks(pid))
        ml = admin.ml_backends(pid)
        assert len(ml) == 1 and ml[0]["url"] == f"http://127.0.0.1:{backend_port}"
    finally:
        ls.stop()
