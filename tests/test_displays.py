"""Notebook-style displays with real runs: what a cell's last expression and its
display() calls show under it, bounded, cold and warm, and HTML made harmless."""

from __future__ import annotations

import psutil
import pytest

from taskrun.service.facade import Service

from .conftest import make_settings

NOTEBOOK = '''# %% load
import pandas as pd
df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
df
# %% describe
df.describe()
# %% nothing shown
x = 5
df;
None
# %% chart
import plotly.graph_objects as go
display(go.Figure(go.Bar(x=[1, 2], y=[3, 4])))
# %% figure left open
import matplotlib.pyplot as plt
plt.plot([1, 2, 3])
# %% from a function
def helper():
    display({"deep": True})
helper()
"too"
'''


@pytest.fixture(params=["cold", "warm"])
def svc(request, tmp_path, tasks_dir):
    service = Service(make_settings(tmp_path, TASKRUN_LAUNCH=request.param)
                      ).start(sample_system=False)
    yield service
    service.stop()


def displays(svc: Service, run_id: int) -> list[list[dict]]:
    return [[{**d, **svc.run_display(run_id, d["index"])} for d in c["displays"]]
            for c in svc.run_cells(run_id)]


def test_cells_show_tables_charts_images_and_values_under_them(svc, tasks_dir):
    (tasks_dir / "nb.py").write_text(NOTEBOOK)
    run = svc.wait(svc.submit("nb").id, 90)
    assert run.status == "succeeded", svc.read_log(run.id).content
    shown = displays(svc, run.id)
    load, describe, nothing, chart, figure, function = shown
    assert [d["kind"] for d in load] == ["table"]
    assert load[0]["data"]["columns"] == ["a", "b"] and load[0]["data"]["rows"] == \
        [[1, "x"], [2, "y"], [3, "z"]]
    assert load[0]["rows"] == 3 and load[0]["columns"] == 2
    assert describe[0]["kind"] == "table" and describe[0]["data"]["index"][0] == "count"
    assert nothing == []  # an assignment, a trailing ';' and None show nothing
    assert chart[0]["kind"] == "chart" and chart[0]["data"]["data"][0]["type"] == "bar"
    # (as in Jupyter: plot()'s value, then the figure left open, as a PNG)
    assert [d["kind"] for d in figure] == ["text", "image"] and figure[1]["mime"] == "image/png"
    # display() inside helper() is the calling cell's; a dict is its repr, as in IPython
    assert [d["data"] for d in function] == ["{'deep': True}", "'too'"]


def test_a_failing_cell_keeps_what_it_displayed_before_failing(svc, tasks_dir):
    (tasks_dir / "fails.py").write_text("# %% one\n1 + 1\n# %% two\ndisplay('before')\n"
                                        "raise ValueError('boom')\n# %% three\n3\n")
    run = svc.wait(svc.submit("fails").id, 60)
    assert run.status == "failed"
    one, two, three = displays(svc, run.id)
    assert one[0]["data"] == "2" and two[0]["data"] == "'before'" and three == []


def test_a_huge_table_is_bounded_and_says_so(svc, tasks_dir):
    (tasks_dir / "huge.py").write_text(
        "# %%\nimport numpy as np, pandas as pd\n"
        "big = pd.DataFrame({'n': np.arange(10_000_000), 's': 'text ' * 20})\nbig\n")
    server = psutil.Process()
    before = server.memory_info().rss
    run = svc.wait(svc.submit("huge").id, 120)
    assert run.status == "succeeded", svc.read_log(run.id).content
    (cell,) = svc.run_cells(run.id)
    (meta,) = cell["displays"]
    item = svc.run_display(run.id, meta["index"])
    assert item["rows"] == 10_000_000 and len(item["data"]["rows"]) <= 1000
    assert meta["size"] <= svc.settings.display_max_kb * 1024
    assert server.memory_info().rss - before < 100 * 2**20  # (the table stayed in the task)


def test_html_from_a_task_runs_no_script_in_the_dashboard(svc, tasks_dir):
    (tasks_dir / "evil.py").write_text(
        "# %%\nclass Evil:\n    def _repr_html_(self):\n"
        "        return ('<table><tr><td>ok</td></tr></table><script>parent.pwned=1</script>'\n"
        "                '<img src=x onerror=\"parent.pwned=2\">'\n"
        "                '<a href=\"javascript:alert(1)\">x</a><iframe src=\"/\"></iframe>')\n"
        "Evil()\n")
    run = svc.wait(svc.submit("evil").id, 60)
    ((meta,),) = [c["displays"] for c in svc.run_cells(run.id)]
    item = svc.run_display(run.id, meta["index"])
    html = item["data"]
    assert item["kind"] == "html" and "<td>ok</td>" in html
    for bad in ("<script", "onerror", "javascript:", "<iframe", "pwned=1"):
        assert bad not in html


def test_a_run_exports_as_a_notebook_that_validates_and_keeps_its_outputs(svc, tasks_dir):
    import json

    import nbformat

    (tasks_dir / "nbx.py").write_text(
        "# %% [markdown]\n# # Orders\n# counted *daily*\n# %% load\nprint('loading')\n"
        "import pandas as pd\npd.DataFrame({'n': [1, 2]})\n# %% fail\nraise KeyError('col')\n"
        "# %% never\nprint('no')\n")
    run = svc.wait(svc.submit("nbx").id, 60)
    assert run.status == "failed"
    nb = nbformat.reads(json.dumps(svc.run_notebook(run.id)), as_version=4)
    nbformat.validate(nb)
    markdown, load, fail, never = nb.cells
    assert markdown.cell_type == "markdown" and markdown.source == "# Orders\ncounted *daily*"
    assert load.outputs[0].output_type == "stream" and load.outputs[0].text == "loading\n"
    table = load.outputs[1]
    assert table.output_type == "display_data" and "<td>2</td>" in table.data["text/html"]
    assert load.metadata.papermill["status"] == "succeeded" and load.execution_count == 1
    assert fail.outputs[-1].output_type == "error" and fail.outputs[-1].ename == "KeyError"
    assert never.outputs == [] and never.execution_count is None
    assert nb.metadata.papermill["exception"] is True


def test_an_ipynb_imports_as_a_task_and_runs_with_its_parameters_cell(svc):
    from starlette.testclient import TestClient

    from taskrun.api import create_api

    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Report\n", "daily"]},
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "execution_count": 3,
         "outputs": [{"output_type": "stream", "name": "stdout", "text": "old"}],
         "source": 'day = "2020-01-01"\nfactor = 2'},
        {"cell_type": "code", "metadata": {}, "execution_count": 4, "outputs": [],
         "source": "%matplotlib inline\nprint(day, factor * 10, type(factor).__name__)"}]}
    client = TestClient(create_api(lambda: svc))
    made = client.post("/tasks", json={"id": "imported", "notebook": notebook})
    assert made.status_code == 201, made.text
    params = made.json()["metadata"]["params"]
    assert params["day"]["type"] == "date" and params["factor"]["type"] == "int"
    cells = svc.run_cells(svc.wait(svc.submit("imported").id, 60).id)
    assert len(cells) == 2  # markdown is not a cell that runs
    run = svc.wait(svc.submit("imported", {"day": "2024-05-01", "factor": 3}).id, 60)
    assert run.status == "succeeded"
    assert svc.read_log(run.id).content.strip() == "2024-05-01 30 int"
    exported = client.get(f"/tasks/runs/{run.id}/notebook")
    assert exported.status_code == 200
    assert exported.json()["cells"][1]["metadata"]["tags"] == ["parameters"]


def test_the_run_diff_names_a_cells_table_that_changed(svc, tasks_dir):
    code = ("# %% load\nimport os, pandas as pd\nrows = int(os.environ['TASKRUN_PARAM_N'])\n"
            "pd.DataFrame({'a': range(rows)})\n# %% check\nassert rows > 1, 'too few'\n")
    (tasks_dir / "tables.py").write_text(
        "# /// script\n# [tool.taskrun.params]\n# n = { type = \"int\", default = 5 }\n"
        "# ///\n" + code)
    good = svc.wait(svc.submit("tables").id, 60)
    bad = svc.wait(svc.submit("tables", {"n": 0}).id, 60)
    assert (good.status, bad.status) == ("succeeded", "failed")
    changed = svc.run_diff(bad.id)["cell_tables"]
    assert changed == {"load": {"before": [[5, 1]], "after": [[0, 1]]}}
