import re

import pytest

from taskrun.errors import InvalidMetadata, InvalidParams
from taskrun.status import Concurrency
from taskrun.store import block_writer, metadata
from taskrun.store.params import resolve_params

CODE = '''"""Docstring line."""
# /// script
# dependencies = []
# [tool.taskrun]
# description = "Load orders"
# timeout = 600
# concurrency = "queue"
# [tool.taskrun.params]
# day = { type = "date", default = "today", help = "partition" }
# n = { type = "int", default = 3 }
# mode = { type = "choice", choices = ["fast", "full"], default = "fast" }
# [tool.taskrun.env]
# REGION = "eu"
# ///
print("hi")
'''


def test_parse_reads_the_block_without_running_the_code():
    meta = metadata.parse(CODE + "raise SystemExit('must not run')\n")
    assert meta.description == "Load orders"
    assert meta.timeout == 600
    assert meta.concurrency is Concurrency.QUEUE
    assert [p.name for p in meta.params] == ["day", "n", "mode"]
    assert meta.env == {"REGION": "eu"}


def test_description_falls_back_to_docstring():
    assert metadata.parse('"""First line.\n\nMore."""\nx = 1\n').description == "First line."


@pytest.mark.parametrize("bad", [
    "# /// script\n# [tool.taskrun]\n# timeout = -1\n# ///\n",
    "# /// script\n# [tool.taskrun]\n# timeout = 'soon'\n# ///\n",
    "# /// script\n# [tool.taskrun]\n# colour = 'red'\n# ///\n",
    "# /// script\n# [tool.taskrun]\n# memory_mb = 0\n# ///\n",
    "# /// script\n# [tool.taskrun]\n# cpu_seconds = 1.5\n# ///\n",
    "# /// script\n# [tool.taskrun\n# ///\n",
    "# /// script\n# [tool.taskrun.params]\n# n = { type = 'complex' }\n# ///\n",
    "# /// script\n# [tool.taskrun.params]\n# n = { type = 'int', default = 'x' }\n# ///\n",
])
def test_invalid_metadata_is_explained(bad):
    with pytest.raises(InvalidMetadata):
        metadata.parse(bad + "x = 1\n")


def test_params_are_coerced_and_checked():
    meta = metadata.parse(CODE)
    assert resolve_params(meta, {"n": "7"}) == {"day": "today", "n": "7", "mode": "fast"}
    with pytest.raises(InvalidParams, match="'n'"):
        resolve_params(meta, {"n": "seven"})
    with pytest.raises(InvalidParams, match="unknown"):
        resolve_params(meta, {"nope": 1})
    with pytest.raises(InvalidParams):
        resolve_params(meta, {"mode": "slow"})
    with pytest.raises(InvalidParams):
        resolve_params(meta, {"day": "2024-13-45"})


def test_replace_block_round_trips():
    meta = metadata.parse(CODE).as_dict()
    meta["timeout"] = 30
    meta["description"] = 'Quote " and unicode é'
    new = block_writer.replace_block(CODE, meta)
    parsed = metadata.parse(new)
    assert parsed.timeout == 30 and parsed.description == 'Quote " and unicode é'
    assert new.endswith('print("hi")\n')
    added = block_writer.replace_block("print(1)\n",
                                       {"description": "d", "concurrency": "parallel"})
    assert metadata.parse(added).concurrency is Concurrency.PARALLEL


def test_the_settings_form_keeps_what_it_does_not_edit():
    code = ('# /// script\n# requires-python = ">=3.11"\n# dependencies = ["requests"]\n'
            '# [tool.taskrun]\n# concurrency = "queue"\n# memory_mb = 512\n'
            '# secrets = ["DB_PASSWORD"]\n# schedule = ["0 6 * * *", "30 18 * * 1-5"]\n'
            '# timezone = "Europe/Berlin"\n# misfire = "once"\n# retries = 3\n'
            '# webhook = "https://hooks.example.org/x"\n# after = ["extract"]\n'
            '# launch = "warm"\n# preload = ["json"]\n'
            '# [tool.taskrun.params]\n'
            '# mode = { type = "choice", choices = ["a", "b"], default = "a", required = true }\n'
            '# ///\nprint(1)\n')
    before = metadata.parse(code)
    edited = {**before.as_dict(), "description": "now described"}
    after_code = block_writer.replace_block(code, edited)
    after = metadata.parse(after_code)
    assert after.description == "now described"
    assert {**after.as_dict(), "description": ""} == {**before.as_dict(), "description": ""}
    assert '# dependencies = ["requests"]' in after_code
    assert '# requires-python = ">=3.11"' in after_code


def test_file_params_and_output_expectations_parse_and_survive_the_settings_form():
    from taskrun.store import metadata as m

    code = ('# /// script\n# [tool.taskrun]\n# resources = { num_cpus = 1, "accel:x" = 2 }\n'
            '# [tool.taskrun.params]\n'
            '# data = { type = "file", accept = [".CSV", ".parquet"], max_mb = 5 }\n'
            '# [tool.taskrun.outputs."orders.csv"]\n# min_rows = 1\n# columns = ["a"]\n'
            '# [tool.taskrun.outputs."sub/x.parquet"]\n# required = true\n# ///\nprint(1)\n')
    meta = m.parse(code)
    (data,) = meta.params
    assert (data.type, data.accept, data.max_mb) == ("file", (".csv", ".parquet"), 5.0)
    assert [(o.name, o.min_rows, o.columns, o.required) for o in meta.outputs] == [
        ("orders.csv", 1, ("a",), False), ("sub/x.parquet", None, (), True)]
    again = m.parse(block_writer.replace_block(code, meta.as_dict()))
    assert (again.params, again.outputs, again.resources) == \
        (meta.params, meta.outputs, meta.resources)
    bad = [('# [tool.taskrun.outputs."../x.csv"]\n# min_rows = 1\n', "'..' part"),
           ('# [tool.taskrun.outputs."/abs.csv"]\n# min_rows = 1\n', "absolute"),
           ('# [tool.taskrun.outputs."a.csv"]\n# min_rows = -1\n', "min_rows must be"),
           ('# [tool.taskrun.outputs."a.csv"]\n# rows = 1\n', "unknown key"),
           ('# [tool.taskrun.params]\n# f = { type = "file", default = "x" }\n', "no default"),
           ('# [tool.taskrun.params]\n# f = { type = "str", accept = [".csv"] }\n',
            "are for type 'file'"),
           ('# [tool.taskrun.params]\n# f = { type = "file", accept = ["csv/x"] }\n',
            "list of extensions")]
    for block, message in bad:
        with pytest.raises(InvalidMetadata, match=re.escape(message)):
            m.parse(f"# /// script\n# [tool.taskrun]\n{block}# ///\n")
