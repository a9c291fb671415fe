import pytest

from taskrun import app_log, settings
from taskrun.errors import SettingsError


def test_defaults_point_into_the_project():
    s = settings.load({})
    assert s.home == settings.PROJECT_ROOT / "data"
    assert s.tasks_dir == settings.PROJECT_ROOT / "tasks"
    assert s.database_url == f"sqlite:///{s.home / 'taskrun.db'}"
    assert s.max_concurrency >= 1


def test_database_url_follows_home(tmp_path):
    s = settings.load({"TASKRUN_HOME": str(tmp_path)})
    assert s.database_url == f"sqlite:///{tmp_path / 'taskrun.db'}"


@pytest.mark.parametrize(("name", "value"), [
    ("TASKRUN_MAX_CONCURRENCY", "0"),
    ("TASKRUN_MAX_CONCURRENCY", "lots"),
    ("TASKRUN_MAX_QUEUE", "-3"),
    ("TASKRUN_DEFAULT_TIMEOUT", "0"),
    ("TASKRUN_KILL_GRACE", "-1"),
    ("TASKRUN_KILL_GRACE", "nan"),
    ("TASKRUN_LOG_LEVEL", "LOUD"),
    ("TASKRUN_LOG_MAX_BYTES", "1.5"),
])
def test_invalid_values_name_the_variable_and_what_it_accepts(name, value):
    with pytest.raises(SettingsError) as err:
        settings.load({name: value})
    message = str(err.value)
    assert name in message and repr(value) in message and "expected" in message


def test_every_setting_has_help_and_a_documented_default():
    rows = settings.defaults_table()
    assert [r[0] for r in rows] == [s.name for s in settings.SETTINGS]
    assert all(name.startswith("TASKRUN_") and default and help_ for name, default, help_ in rows)


def test_the_app_log_rolls_over_at_its_size_limit(tmp_path):
    import logging

    from .conftest import make_settings

    s = make_settings(tmp_path)
    log = logging.getLogger("taskrun")
    before = list(log.handlers)
    app_log.configure_logging(s)
    (handler,) = [h for h in log.handlers if h not in before]
    try:
        handler.maxBytes = 2000
        for i in range(80):
            logging.getLogger("taskrun.test").warning("line %d %s", i, "x" * 80)
        handler.flush()
        rolled = sorted(p.name for p in s.logs_dir.iterdir())
        assert rolled == ["app.log", "app.log.1", "app.log.2", "app.log.3"]  # backupCount=3
        assert (s.logs_dir / "app.log").stat().st_size <= 2000 + 200  # one line past at most
        assert "line 79" in (s.logs_dir / "app.log").read_text()
    finally:
        log.removeHandler(handler)
        handler.close()


def test_a_postgres_url_goes_through_psycopg_and_others_are_refused(tmp_path):
    for given in ("postgresql://u:p@db:5432/runs", "postgres://u:p@db:5432/runs",
                  "postgresql+psycopg://u:p@db:5432/runs"):
        got = settings.load({"TASKRUN_HOME": str(tmp_path), "TASKRUN_DATABASE_URL": given})
        assert got.database_url == "postgresql+psycopg://u:p@db:5432/runs"
        assert not got.is_sqlite
    with pytest.raises(SettingsError, match=r"TASKRUN_DATABASE_URL=.*sqlite:/// or postgresql"):
        settings.load({"TASKRUN_DATABASE_URL": "mysql://u@db/runs"})
