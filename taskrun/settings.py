"""Every TASKRUN_* setting in one table: name, default, help, and how to parse it.

The table drives validation, the README's configuration section (checked by a
test) and ``python -m taskrun settings``. Tests pass a dict as ``environ``
instead of patching ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from taskrun.errors import SettingsError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError
    return value


def _positive_float(raw: str) -> float:
    value = _non_negative_float(raw)
    if value == 0:
        raise ValueError
    return value


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0 < value <= 1:
        raise ValueError
    return value


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError
    return level


def _path(raw: str) -> Path:
    if not raw.strip():
        raise ValueError
    return Path(raw).expanduser().resolve()


def _database_url(raw: str) -> str:
    """SQLite or PostgreSQL; a plain ``postgresql://`` (or ``postgres://``, as hosting
    platforms write it) goes through psycopg 3, the driver installed."""
    for plain in ("postgresql://", "postgres://"):
        if raw.startswith(plain):
            return "postgresql+psycopg://" + raw[len(plain):]
    if not raw.startswith(("sqlite:", "postgresql+psycopg://")):
        raise ValueError(raw)
    return raw


def _optional_role(raw: str) -> str:
    if raw not in ("", "viewer", "operator", "admin"):
        raise ValueError(raw)
    return raw


def _on_off(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("on", "off", "true", "false", "1", "0"):
        raise ValueError
    return value in ("on", "true", "1")


def _timezone(raw: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(raw.strip())
    except (ValueError, ZoneInfoNotFoundError):
        raise ValueError from None
    return raw.strip()


def _url(raw: str) -> str:
    if not raw.strip().startswith(("http://", "https://")):
        raise ValueError
    return raw.strip().rstrip("/")


def _optional_url(raw: str) -> str:
    return _url(raw) if raw.strip() else ""


def _optional_smtp_url(raw: str) -> str:
    raw = raw.strip()
    if raw and not raw.startswith(("smtp://", "smtps://")):
        raise ValueError
    return raw


def _one_of(*choices: str):
    def parse(raw: str) -> str:
        if raw.strip() not in choices:
            raise ValueError
        return raw.strip()
    return parse


_notify_on = _one_of("failure", "success", "always")
_launch_mode = _one_of("auto", "warm", "cold")
_isolation_mode = _one_of("auto", "uid", "sandbox", "off")


def _name_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Setting:
    name: str
    default: Callable[[dict], str] | str
    help: str
    parse: Callable[[str], object]
    accepts: str


SECRET_SETTINGS = frozenset({"TASKRUN_ADMIN_PASSWORD", "TASKRUN_API_TOKEN", "TASKRUN_SECRET_KEY",
                             "TASKRUN_SMTP_URL", "TASKRUN_OIDC_CLIENT_SECRET",
                             "TASKRUN_METRICS_TOKEN"})

SETTINGS: tuple[Setting, ...] = (
    Setting("TASKRUN_HOME", str(PROJECT_ROOT / "data"),
            "Data directory: database, run logs, locks, app log.", _path, "a directory path"),
    Setting("TASKRUN_TASKS_DIR", str(PROJECT_ROOT / "tasks"),
            "Directory holding the task scripts (`<name>.py`).", _path, "a directory path"),
    Setting("TASKRUN_DATABASE_URL", lambda s: f"sqlite:///{s['home'] / 'taskrun.db'}",
            "SQLAlchemy URL of the run history (default: SQLite file in the data dir); "
            "PostgreSQL: `postgresql://user:password@host:5432/db`.",
            _database_url, "a sqlite:/// or postgresql:// URL"),
    Setting("TASKRUN_MAX_CONCURRENCY", str(os.cpu_count() or 1),
            "Most runs executing at once, across every process sharing the data dir "
            "(default: CPU count).", _positive_int, "an integer >= 1"),
    Setting("TASKRUN_MAX_QUEUE", "1000",
            "Most runs waiting in the queue; further submits are refused.",
            _positive_int, "an integer >= 1"),
    Setting("TASKRUN_DEFAULT_TIMEOUT", "3600",
            "Seconds a run may take when its task declares no `timeout`.",
            _positive_float, "a number of seconds > 0"),
    Setting("TASKRUN_KILL_GRACE", "5",
            "Seconds between SIGTERM and SIGKILL when a run is timed out or cancelled.",
            _non_negative_float, "a number of seconds >= 0"),
    Setting("TASKRUN_LOG_LEVEL", "INFO", "Level of the application log (`data/logs/app.log`).",
            _log_level, "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    Setting("TASKRUN_LOG_MAX_BYTES", str(20 * 1024 * 1024),
            "Cap on one run's log; output beyond it is discarded behind a marker line.",
            _positive_int, "an integer number of bytes >= 1"),
    Setting("TASKRUN_MIN_FREE_MB", "100",
            "Free space kept on the data dir's disk: below it new runs are refused (503) "
            "and running runs' logs are capped, so the database and the app log keep "
            "working; health says `degraded`.", _non_negative_int, "an integer >= 0"),
    Setting("TASKRUN_DB_BUSY_TIMEOUT", "30",
            "Seconds a write waits for another process's lock on the SQLite database "
            "before it is refused (503) or, for a run's end, retried later.",
            _positive_float, "a number of seconds > 0"),
    Setting("TASKRUN_LEASE_SECONDS", "30",
            "On a database shared by several hosts: a server that has not renewed its "
            "lease for this long is taken for dead, and its running runs are marked "
            "`lost` by another.", _positive_float, "a number > 0"),
    Setting("TASKRUN_SAMPLE_INTERVAL", "1",
            "Seconds between resource samples (CPU, memory) of each running run.",
            _positive_float, "a number of seconds > 0"),
    Setting("TASKRUN_POLL_INTERVAL", "0.5",
            "Seconds between checks for work submitted by other processes "
            "(local submits wake the supervisor at once).",
            _positive_float, "a number of seconds > 0"),
    Setting("TASKRUN_MONITOR_INTERVAL", "2",
            "Seconds between system samples kept for the System page charts.",
            _positive_float, "a number of seconds > 0"),
    Setting("TASKRUN_RETENTION_DAYS", "90",
            "Finished runs (with their logs) older than this many days are pruned hourly; "
            "0 keeps them forever.", _non_negative_int, "an integer >= 0"),
    Setting("TASKRUN_RETENTION_RUNS", "0",
            "Most finished runs kept per task (the newest); 0 means no limit.",
            _non_negative_int, "an integer >= 0"),
    Setting("TASKRUN_AUTH", "on",
            "`on`: sign-in for the dashboard, bearer tokens for the API. `off` opens both "
            "to anyone who reaches the port (local development only; logged loudly).",
            _on_off, "on or off"),
    Setting("TASKRUN_SESSION_DAYS", "14",
            "How long a dashboard sign-in lasts (days); \"remember me\" off ends it with "
            "the browser session too.", _positive_float, "a number > 0"),
    Setting("TASKRUN_OIDC_ISSUER", "",
            "Single sign-on: the OpenID Connect provider's issuer URL (its "
            "`/.well-known/openid-configuration` is read); empty: local users only.",
            _optional_url, "an http(s) URL or empty"),
    Setting("TASKRUN_OIDC_CLIENT_ID", "", "This service's client id at the provider.",
            str, "a string"),
    Setting("TASKRUN_OIDC_CLIENT_SECRET", "", "This service's client secret at the provider.",
            str, "a string"),
    Setting("TASKRUN_OIDC_LABEL", "single sign-on",
            "The provider's name on the sign-in button (\"Sign in with …\").", str, "a string"),
    Setting("TASKRUN_OIDC_DEFAULT_ROLE", "",
            "Role of a signed-on identity with no local user yet (created at its first "
            "sign-in); empty: refused until an admin creates the user (named by its e-mail).",
            _optional_role, "viewer, operator, admin or empty"),
    Setting("TASKRUN_ADMIN_PASSWORD", "",
            "Password of the `admin` user created on first start when there are no users "
            "(default: a random one, printed once in the server output).", str, "a string"),
    Setting("TASKRUN_API_TOKEN", "",
            "A bearer token with the admin role for automation, accepted besides the "
            "tokens created in the service.", str, "a string"),
    Setting("TASKRUN_SECRET_KEY", "",
            "Master key for task secrets and signed links (default: a random key generated "
            "once into `secret.key` in the data dir, owner-only).", str, "a string"),
    Setting("TASKRUN_TIMEZONE", "UTC",
            "IANA time zone of task schedules that name none.", _timezone, "an IANA zone name"),
    Setting("TASKRUN_BASE_URL", "http://localhost:8501",
            "Where the dashboard is reached; links in notifications start with it.",
            _url, "an http(s) URL"),
    Setting("TASKRUN_ADVERTISE_URL", lambda s: s["base_url"],
            "Where the other servers sharing the database reach this one (they read the "
            "logs of its runs there; default: `TASKRUN_BASE_URL`).", _url, "an http(s) URL"),
    Setting("TASKRUN_WEBHOOK_URL", "",
            "A webhook every task notifies (JSON POST), besides its own `webhook`.",
            _optional_url, "an http(s) URL or empty"),
    Setting("TASKRUN_WEBHOOK_ON", "failure",
            "Which run ends go to `TASKRUN_WEBHOOK_URL`: failure, success or always.",
            _notify_on, "failure, success or always"),
    Setting("TASKRUN_SMTP_URL", "",
            "Mail server for tasks' `email` notifications: "
            "`smtp://[user:password@]host[:port]` (`?starttls=1`) or `smtps://…`.",
            _optional_smtp_url, "an smtp:// or smtps:// URL or empty"),
    Setting("TASKRUN_SMTP_FROM", "taskrun@localhost",
            "Sender address of notification e-mails.", str, "an e-mail address"),
    Setting("TASKRUN_LAUNCH", "auto",
            "How runs start: `auto` (warm for tasks with `launch = \"warm\"`, else a new "
            "interpreter), `warm` (every task from a zygote) or `cold` (never warm).",
            _launch_mode, "auto, warm or cold"),
    Setting("TASKRUN_BACKEND", "local",
            "Where runs of tasks that do not name a `backend` execute: `local` (a process "
            "of this server) or `ray` (a job on the Ray cluster at `TASKRUN_RAY_ADDRESS`).",
            _one_of("local", "ray"), "local or ray"),
    Setting("TASKRUN_RAY_ADDRESS", "",
            "The Ray cluster's Jobs API (its dashboard address, e.g. "
            "`http://127.0.0.1:8265`); needed by any task run on `ray`.",
            _optional_url, "an http(s) URL or empty"),
    Setting("TASKRUN_RAY_PYTHON", "python",
            "The interpreter a Ray run's entrypoint starts on the node (found on the "
            "node's PATH, or a full path).", str, "a command"),
    Setting("TASKRUN_RAY_MAX_CONCURRENCY", "4",
            "Runs this server keeps on the Ray cluster at once (the cluster's capacity, not "
            "this host's): further Ray runs wait queued.", _positive_int,
            "a positive integer"),
    Setting("TASKRUN_UPLOAD_MAX_MB", "100",
            "The largest file a `file` param accepts (MB); a param's own `max_mb` can "
            "lower it.", _positive_float, "a number > 0"),
    Setting("TASKRUN_OUTPUT_INSPECT_MB", "512",
            "Tables in a run's outputs up to this size (MB) are read to the end for their "
            "row count; larger ones get their header's columns and \"too large to "
            "inspect\".", _positive_float, "a number > 0"),
    Setting("TASKRUN_OUTPUT_ROWS_DROP", "0.5",
            "A successful run is warned about when a table has fewer rows than the last "
            "good run's by more than this fraction.", _fraction, "a fraction in (0, 1]"),
    Setting("TASKRUN_RESULT_MAX_KB", "64",
            "The largest result (JSON written to `TASKRUN_RESULT_FILE`) kept on a run.",
            _positive_int, "a positive integer"),
    Setting("TASKRUN_RAY_OUTPUTS_MAX_MB", "100",
            "What a Ray run's outputs may add up to when brought back from its node (MB); "
            "files past it are listed as not brought back.", _positive_float,
            "a number > 0"),
    Setting("TASKRUN_ISOLATION", "auto",
            "How a task is walled off from the server's data dir, key, database and "
            "process: `uid` (a separate unprivileged uid; the server runs as root), "
            "`sandbox` (bubblewrap: a mount and PID namespace showing the task only its "
            "own files), `auto` (both where possible, else what is) or `off`.",
            _isolation_mode, "auto, uid, sandbox or off"),
    Setting("TASKRUN_TASK_UID", "65534",
            "The uid (and gid) tasks run as when the server runs as root.",
            _non_negative_int, "a uid number"),
    Setting("TASKRUN_TASK_ENV_PASSTHROUGH", "",
            "Comma-separated names of server environment variables passed to tasks, "
            "beyond the safe defaults (PATH, HOME, LANG, TZ, ...).", _name_list,
            "comma-separated variable names"),
    Setting("TASKRUN_DISPLAY_ROWS", "1000",
            "Rows of a table a cell displays that are kept (the full shape is said).",
            _positive_int, "a whole number > 0"),
    Setting("TASKRUN_DISPLAY_MAX_KB", "1024",
            "The size one display of a cell may take (a larger table keeps fewer rows, "
            "text is cut, anything else is not kept; each says so).", _positive_float,
            "a number of KiB > 0"),
    Setting("TASKRUN_DISPLAY_RUN_MAX_KB", "16384",
            "The size all the displays of one run may take; later ones are not kept.",
            _positive_float, "a number of KiB > 0"),
    Setting("TASKRUN_METRICS_TOKEN", "",
            "A bearer token that opens `GET /api/metrics` (Prometheus' text format) and "
            "nothing else, for a scraper; without it, the metrics need a viewer's token.",
            str, "a long random string"),
    Setting("TASKRUN_ENV_KEEP_DAYS", "14",
            "Task environments (built from a task's declared `dependencies`) that no current "
            "task version and no run in this many days used are removed by retention.",
            _positive_int, "a whole number of days > 0"),
    Setting("TASKRUN_ENV_RESOLVE_TIMEOUT", "120",
            "Seconds a resolution of a task's dependencies may take (an index that does not "
            "answer ends in a clear error, not a hung save).", _positive_float,
            "a number of seconds > 0"),
    Setting("TASKRUN_ENV_BUILD_TIMEOUT", "900",
            "Seconds the install of a new task environment may take.", _positive_float,
            "a number of seconds > 0"),
    Setting("TASKRUN_ENV_BUILDS", "off",
            "`on` lets dependencies without a wheel be built from source on the server "
            "(that runs the package's own build code at save time); `off`: wheels only.",
            _on_off, "on or off"),
    Setting("TASKRUN_ENV_ZYGOTES", "2",
            "Warm launches in task environments: at most this many environments keep a "
            "zygote (the least recently used is stopped; beyond the cap, runs start cold).",
            _non_negative_int, "a whole number >= 0"),
)

_ATTR = {s.name: s.name.removeprefix("TASKRUN_").lower() for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    home: Path
    tasks_dir: Path
    database_url: str
    max_concurrency: int
    max_queue: int
    default_timeout: float
    kill_grace: float
    log_level: str
    log_max_bytes: int
    min_free_mb: int
    db_busy_timeout: float
    lease_seconds: float
    sample_interval: float
    poll_interval: float
    monitor_interval: float
    retention_days: int
    retention_runs: int
    auth: bool
    session_days: float
    oidc_issuer: str
    oidc_client_id: str
    oidc_client_secret: str
    oidc_label: str
    oidc_default_role: str
    admin_password: str
    api_token: str
    secret_key: str
    timezone: str
    base_url: str
    advertise_url: str
    webhook_url: str
    webhook_on: str
    smtp_url: str
    smtp_from: str
    launch: str
    backend: str = "local"
    ray_address: str = ""
    ray_python: str = "python"
    ray_max_concurrency: int = 4
    upload_max_mb: float = 100.0
    output_inspect_mb: float = 512.0
    output_rows_drop: float = 0.5
    result_max_kb: int = 64
    ray_outputs_max_mb: float = 100.0
    isolation: str = "auto"
    task_uid: int = 65534
    task_env_passthrough: tuple[str, ...] = field(default_factory=tuple)
    display_rows: int = 1000
    display_max_kb: float = 1024.0
    display_run_max_kb: float = 16384.0
    metrics_token: str = ""
    env_keep_days: int = 14
    env_resolve_timeout: float = 120.0
    env_build_timeout: float = 900.0
    env_builds: bool = False
    env_zygotes: int = 2

    @cached_property  # (a launch asks for several of these paths)
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @cached_property
    def run_logs_dir(self) -> Path:
        return self.home / "logs" / "runs"

    @cached_property
    def locks_dir(self) -> Path:
        return self.home / "locks"

    @cached_property
    def work_dir(self) -> Path:
        return self.home / "work"

    @cached_property
    def runs_dir(self) -> Path:
        """``<id>/`` per run: its ``inputs/`` (file params), ``outputs/`` and result."""
        return self.home / "runs"

    @cached_property
    def uploads_dir(self) -> Path:
        """Uploaded files, one per distinct content (named by its sha256)."""
        return self.home / "uploads"

    @cached_property
    def envs_dir(self) -> Path:
        """Task environments, one per distinct lock (named by its hash)."""
        return self.home / "envs"

    @cached_property
    def app_log(self) -> Path:
        return self.logs_dir / "app.log"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Read every setting from ``environ`` (default ``os.environ``); fail naming the variable."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for setting in SETTINGS:
        attr = _ATTR[setting.name]
        if attr in overrides:
            values[attr] = overrides[attr]
            continue
        raw = env.get(setting.name)
        if raw is None or raw == "":
            default = setting.default
            raw = default(values) if callable(default) else default
        try:
            values[attr] = setting.parse(raw)
        except (ValueError, TypeError):
            raise SettingsError(
                f"{setting.name}={raw!r} is invalid: expected {setting.accepts}."
            ) from None
    return Settings(**values)


def defaults_table() -> list[tuple[str, str, str]]:
    """(name, default as documented, help) for the README and the CLI."""
    rows = []
    for s in SETTINGS:
        if s.name == "TASKRUN_ADVERTISE_URL":
            default = "`TASKRUN_BASE_URL`"
        elif callable(s.default):
            default = "SQLite file `taskrun.db` in the data dir"
        elif s.name == "TASKRUN_MAX_CONCURRENCY":
            default = "CPU count"
        elif s.name in ("TASKRUN_HOME", "TASKRUN_TASKS_DIR"):
            default = f"`{Path(s.default).relative_to(PROJECT_ROOT)}/` in the project"
        else:
            default = f"`{s.default}`" if s.default else "(none)"
        rows.append((s.name, default, s.help))
    return rows
