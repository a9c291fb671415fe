"""Run inputs and outputs with real runs: file params, the output dir, its checks."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import textwrap

import psutil
import pytest
from fastapi.testclient import TestClient

from taskrun.api import create_api
from taskrun.errors import InvalidParams
from taskrun.runs import retention

from .conftest import PROJECT, clean_env, database_env, make_settings, wait_for

BLOCK = '# /// script\n# [tool.taskrun]\n{meta}# ///\n'


def task(body: str, meta: str = "") -> str:
    return BLOCK.format(meta="".join(f"# {line}\n" for line in
                                     textwrap.dedent(meta).strip().splitlines())) + \
        textwrap.dedent(body).lstrip("\n")


# A PNG of one pixel, built by hand (no imaging library in the task).
PRODUCE = """
import json, os, struct, zlib
out = os.environ["TASKRUN_OUTPUT_DIR"]
n = int(os.environ.get("TASKRUN_PARAM_N", "3"))
columns = os.environ.get("TASKRUN_PARAM_COLUMNS", "a,b").split(",")
with open(os.path.join(out, "orders.csv"), "w") as f:
    f.write(",".join(columns) + "\\n")
    for i in range(n):
        f.write(",".join(str(i * 10 + j) for j in range(len(columns))) + "\\n")
if os.environ.get("TASKRUN_PARAM_ALL") == "true":
    import pyarrow as pa, pyarrow.parquet as pq
    pq.write_table(pa.table({"x": [1.5, 2.5], "label": ["p", "q"]}),
                   os.path.join(out, "table.parquet"))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xffffffff)
    png = (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\\x00\\xff\\x00\\x00")) + chunk(b"IEND", b""))
    os.makedirs(os.path.join(out, "img"))
    open(os.path.join(out, "img", "dot.png"), "wb").write(png)
    import plotly.graph_objects as go
    go.Figure(go.Bar(y=[n, 1])).write_json(os.path.join(out, "chart.json"))
    os.symlink("/etc/hostname", os.path.join(out, "escape.txt"))
json.dump({"rows": n, "run": os.environ["TASKRUN_RUN_ID"]},
          open(os.environ["TASKRUN_RESULT_FILE"], "w"))
print("made", n)
"""
PRODUCE_META = """
[tool.taskrun.params]
n = { type = "int", default = 3 }
columns = { type = "str", default = "a,b" }
all = { type = "bool", default = false }
"""


@pytest.fixture
def client(service):
    with TestClient(create_api(lambda: service)) as c:
        yield c


def finished(service, run_id):
    return service.wait(run_id, 60)


def test_outputs_are_listed_with_kind_rows_and_columns_and_download_byte_identical(
        service, client, tasks_dir):
    (tasks_dir / "produce.py").write_text(task(PRODUCE, PRODUCE_META))
    first = finished(service, service.submit("produce", {"all": True}).id)
    assert first.status == "succeeded", service.read_log(first.id).content
    listed = {o["name"]: o for o in client.get(f"/tasks/runs/{first.id}/outputs").json()}
    assert set(listed) == {"orders.csv", "table.parquet", "img/dot.png", "chart.json"}
    csv_entry = listed["orders.csv"]
    assert csv_entry["kind"] == "table" and csv_entry["rows"] == 3
    assert [c["name"] for c in csv_entry["columns"]] == ["a", "b"]
    assert {c["type"] for c in csv_entry["columns"]} == {"int64"}
    parquet = listed["table.parquet"]
    assert parquet["kind"] == "table" and parquet["rows"] == 2
    assert parquet["columns"] == [{"name": "x", "type": "double"},
                                  {"name": "label", "type": "string"}]
    assert listed["img/dot.png"]["kind"] == "image" and listed["img/dot.png"]["rows"] is None
    assert listed["chart.json"]["kind"] == "chart" and listed["chart.json"]["columns"] is None
    # The link the task left pointing outside its dir: named, removed, never followed.
    assert "escape.txt: a symbolic link, not kept" in first.output_warnings
    assert client.get(f"/tasks/runs/{first.id}/outputs/escape.txt").status_code == 404
    for name, entry in listed.items():
        r = client.get(f"/tasks/runs/{first.id}/outputs/{name}")
        assert r.status_code == 200, name
        assert hashlib.sha256(r.content).hexdigest() == entry["sha256"]
        assert len(r.content) == entry["size"]
    expected = b"a,b\n0,1\n10,11\n20,21\n"
    assert client.get(f"/tasks/runs/{first.id}/outputs/orders.csv").content == expected
    assert client.get(f"/tasks/runs/{first.id}/outputs/img/dot.png").content.startswith(
        b"\x89PNG")
    preview = client.get(f"/tasks/runs/{first.id}/preview/orders.csv", params={"rows": 2})
    assert preview.json() == {"columns": ["a", "b"], "rows": [[0, 1], [10, 11]], "total": 3}
    assert client.get(f"/tasks/runs/{first.id}/preview/table.parquet").json()["rows"] == \
        [[1.5, "p"], [2.5, "q"]]
    assert client.get(f"/tasks/runs/{first.id}/preview/chart.json").status_code == 422
    assert first.result == {"rows": 3, "run": str(first.id)}
    assert client.get(f"/tasks/runs/{first.id}").json()["result"] == first.result

    # The next run has a dir of its own: the first one's outputs stay as they were.
    second = finished(service, service.submit("produce", {"n": 5}).id)
    assert second.status == "succeeded"
    assert client.get(f"/tasks/runs/{first.id}/outputs/orders.csv").content == expected
    again = {o["name"]: o for o in second.outputs}
    assert again["orders.csv"]["rows"] == 5 and "table.parquet" not in again
    assert f"table.parquet: not produced this time (last good run #{first.id} had it)" \
        in second.output_warnings


@pytest.mark.parametrize("name", ["../x", "..%2Fx", "%2Fetc%2Fpasswd", "a%00b", "nope.csv",
                                  "img%2F..%2F..%2Forders.csv", "%2E%2E/%2E%2E/etc/hostname"])
def test_output_names_that_leave_the_dir_are_refused(service, client, tasks_dir, name):
    (tasks_dir / "produce.py").write_text(task(PRODUCE, PRODUCE_META))
    run = finished(service, service.submit("produce").id)
    r = client.get(f"/tasks/runs/{run.id}/outputs/{name}")
    assert r.status_code in (404, 422), (name, r.status_code)
    assert "root:" not in r.text


def test_a_run_with_nothing_to_show_leaves_no_dir(service, tasks_dir):
    (tasks_dir / "quiet.py").write_text(task("print('nothing made')\n"))
    run = finished(service, service.submit("quiet").id)
    assert run.outputs is None and run.result is None and run.output_warnings is None
    wait_for(lambda: not (service.settings.runs_dir / str(run.id)).exists())


def test_a_bad_table_is_warned_about_against_the_last_good_run(service, tasks_dir):
    (tasks_dir / "produce.py").write_text(task(PRODUCE, PRODUCE_META))
    good = finished(service, service.submit("produce", {"n": 40}).id)
    assert good.status == "succeeded" and not good.output_warnings
    fewer = finished(service, service.submit("produce", {"n": 10}).id)
    assert fewer.output_warnings == [f"orders.csv: 10 rows, 75% fewer than the 40 of last "
                                     f"good run #{good.id}"]
    same = finished(service, service.submit("produce", {"n": 8}).id)  # (20% fewer: fine)
    assert same.output_warnings is None
    empty = finished(service, service.submit("produce", {"n": 0}).id)
    assert empty.status == "succeeded"  # warned about, not failed: nothing was declared
    assert empty.output_warnings == [f"orders.csv: 0 rows (last good run #{same.id} had 8)"]
    dropped = finished(service, service.submit("produce", {"n": 10, "columns": "a,c"}).id)
    warned = " | ".join(dropped.output_warnings)
    assert "orders.csv: column 'b' is gone" in warned
    assert "orders.csv: new column 'c'" in warned


def test_a_violated_expectation_fails_the_run_and_its_chain_does_not_run(service, tasks_dir):
    (tasks_dir / "produce.py").write_text(task(PRODUCE, PRODUCE_META + """
[tool.taskrun.outputs."orders.csv"]
min_rows = 1
columns = ["a", "b"]
"""))
    (tasks_dir / "after.py").write_text(task(
        "import os; print('got', os.environ.get('TASKRUN_UPSTREAM_RESULT'))\n",
        'after = ["produce"]'))
    ok = finished(service, service.submit("produce", {"n": 2}).id)
    assert ok.status == "succeeded"
    chained = wait_for(lambda: [r for r in service.task_history("after")
                                if r.status == "succeeded"])
    assert service.read_log(chained[0].id).content.strip() == \
        'got {"rows": 2, "run": "' + str(ok.id) + '"}'
    bad = finished(service, service.submit("produce", {"n": 0}).id)
    assert bad.status == "failed" and bad.exit_code == 0
    assert bad.error == ("Its outputs failed their checks: orders.csv: 0 rows, expected at "
                         "least 1.")
    assert bad.failure["exception"] == "OutputCheck"
    wait_for(lambda: service.get_run(bad.id).followed_up)
    assert len(service.task_history("after")) == 1
    missing = finished(service, service.submit("produce", {"columns": "a"}).id)
    assert missing.status == "failed" and "missing column(s) 'b'" in missing.error


def test_a_huge_sparse_table_is_not_loaded_into_the_server(tmp_path, tasks_dir):
    from taskrun.service.facade import Service

    svc = Service(make_settings(tmp_path, TASKRUN_OUTPUT_INSPECT_MB=64)).start(
        sample_system=False)
    try:
        (tasks_dir / "sparse.py").write_text(task("""
            import os
            with open(os.path.join(os.environ["TASKRUN_OUTPUT_DIR"], "big.csv"), "wb") as f:
                f.write(b"id,amount\\n1,2\\n")
                f.truncate(2 * 1024 ** 3)  # 2 GB, nearly all a hole
        """))
        server = psutil.Process()
        before = server.memory_info().rss
        run = svc.wait(svc.submit("sparse").id, 120)
        grew = server.memory_info().rss - before
        assert run.status == "succeeded", svc.read_log(run.id).content
        (big,) = run.outputs
        assert big["size"] == 2 * 1024 ** 3 and big["kind"] == "table" and big["rows"] is None
        assert big["note"].startswith("too large to inspect (2,048 MB > 64 MB)")
        assert [c["name"] for c in big["columns"]] == ["id", "amount"]
        assert len(big["sha256"]) == 64
        assert grew < 64 * 1024 ** 2, f"the server grew {grew / 2**20:.0f} MB"
    finally:
        svc.stop()


# ---- file params ------------------------------------------------------------------

READER = """
import os
path = os.environ["TASKRUN_PARAM_DATA"]
print("name", os.environ["TASKRUN_PARAM_DATA_NAME"])
print("mode", oct(os.stat(path).st_mode & 0o777))
print("body", open(path).read().strip())
"""
READER_META = """
[tool.taskrun.params]
data = { type = "file", accept = [".csv", ".txt"], max_mb = 0.01, required = true }
"""


def test_a_file_param_is_uploaded_through_the_api_and_read_by_the_task(service, client,
                                                                       tasks_dir):
    (tasks_dir / "reader.py").write_text(task(READER, READER_META))
    r = client.post("/tasks/reader/execute", data={"params": "{}"},
                    files={"data": ("orders.csv", b"a,b\n1,2\n", "text/csv")})
    assert r.status_code == 202, r.text
    run = finished(service, r.json()["run_id"])
    assert run.status == "succeeded"
    assert service.read_log(run.id).content == "name orders.csv\nmode 0o444\nbody a,b\n1,2\n"
    value = run.params["data"]
    assert value["file"] == "orders.csv" and value["size"] == 8
    assert value["sha256"] == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    # Its copy went with its end; the upload stays for a re-run with the same params.
    assert not (service.settings.runs_dir / str(run.id) / "inputs").exists()
    rerun = finished(service, service.submit("reader", run.params).id)
    assert rerun.status == "succeeded" and "body a,b" in service.read_log(rerun.id).content


@pytest.mark.parametrize(("files", "detail"), [
    ({"data": ("big.csv", b"x" * 20000)}, "larger than"),
    ({"data": ("orders.xlsx", b"a,b\n")}, "not one of the accepted types (.csv, .txt)"),
    ({}, "param 'data' is required"),
    ({"data": ("../escape.csv", b"a\n")}, "is not allowed"),
    ({"data": ("/etc/passwd.csv", b"a\n")}, "is not allowed"),
    ({"other": ("x.csv", b"a\n")}, "unknown file param 'other'"),
])
def test_a_bad_upload_is_refused_before_anything_is_queued(service, client, tasks_dir,
                                                           files, detail):
    (tasks_dir / "reader.py").write_text(task(READER, READER_META))
    before = service.count_runs()
    r = client.post("/tasks/reader/execute", data={"params": "{}"},
                    files={k: (n, io.BytesIO(b), "text/csv") for k, (n, b) in files.items()})
    assert r.status_code == 422, r.text
    assert detail in r.json()["detail"]
    assert service.count_runs() == before


def test_a_file_param_cannot_be_given_as_plain_json(service, client, tasks_dir):
    (tasks_dir / "reader.py").write_text(task(READER, READER_META))
    r = client.post("/tasks/reader/execute", json={"params": {"data": "/etc/passwd"}})
    assert r.status_code == 422 and "is a file: upload it" in r.json()["detail"]
    # (a client encodes a NUL in a part's file name; the service refuses one given it)
    for name in ("a\x00b.csv", "..", "dir/x.csv", "x\n.csv"):
        with pytest.raises(InvalidParams, match="is not allowed"):
            service.submit("reader", files={"data": (name, io.BytesIO(b"a\n"))})
    forged = {"file": "x.csv", "size": 1, "sha256": "0" * 64}
    r = client.post("/tasks/reader/execute", json={"params": {"data": forged}})
    assert r.status_code == 422 and "no longer kept" in r.json()["detail"]


@pytest.mark.slow
def test_the_cli_uploads_a_file_param(tmp_path, tasks_dir):
    (tasks_dir / "reader.py").write_text(task(READER, READER_META))
    data = tmp_path / "input.txt"
    data.write_text("from the cli\n")
    env = clean_env()
    env.update(TASKRUN_HOME=str(tmp_path / "data"), TASKRUN_TASKS_DIR=str(tasks_dir),
               TASKRUN_POLL_INTERVAL="0.1", PYTHONPATH=str(PROJECT), TASKRUN_AUTH="off",
               **database_env(tmp_path))
    done = subprocess.run([sys.executable, "-m", "taskrun", "run", "reader", "--param",
                           f"data=@{data}"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "name input.txt" in done.stdout and "body from the cli" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "taskrun", "run", "reader", "--param",
                          f"data=@{tmp_path / 'missing.csv'}"], env=env, capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode != 0 and "cannot read" in bad.stderr


def test_outputs_and_uploads_go_with_their_runs(tmp_path, tasks_dir):
    from datetime import timedelta

    from taskrun.history.models import utcnow
    from taskrun.service.facade import Service

    svc = Service(make_settings(tmp_path, TASKRUN_RETENTION_DAYS=1)).start(sample_system=False)
    try:
        (tasks_dir / "produce.py").write_text(task(PRODUCE, PRODUCE_META))
        (tasks_dir / "reader.py").write_text(task(READER, READER_META))
        made = svc.wait(svc.submit("produce").id, 60)
        read = svc.wait(svc.submit("reader", files={"data": ("a.csv", io.BytesIO(b"1\n"))}).id,
                        60)
        upload = svc.uploads.path(read.params["data"]["sha256"])
        assert (svc.settings.runs_dir / str(made.id) / "outputs" / "orders.csv").exists()
        assert upload.exists()
        os.utime(upload, (0, 0))  # (past the grace a fresh upload has)
        result = retention.prune(svc.db, svc.settings, now=utcnow() + timedelta(days=2))
        assert result.runs == 2
        assert not (svc.settings.runs_dir / str(made.id)).exists()
        assert not upload.exists()
    finally:
        svc.stop()
