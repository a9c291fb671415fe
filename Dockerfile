# syntax=docker/dockerfile:1

# ---- build: wheels for every dependency (compilers stay in this stage) ----
FROM python:3.11-slim AS build
WORKDIR /src
COPY requirements.txt .
RUN pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.txt

# ---- runtime ----
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TASKRUN_HOME=/app/data \
    TASKRUN_TASKS_DIR=/app/tasks \
    TASKRUN_TASK_UID=10002

# tini is PID 1: it forwards signals to the server and reaps orphaned task processes.
# bubblewrap is the tasks' sandbox where the container runtime allows one; tasks run
# as the unprivileged user "task" (10002) either way.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini bubblewrap \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --no-create-home --uid 10002 --shell /usr/sbin/nologin task

WORKDIR /app
COPY --from=build /wheels /wheels
COPY requirements.txt .
# The same install step as the README's run command, from the prebuilt wheels.
RUN pip install --no-cache-dir --no-index --find-links=/wheels -r requirements.txt \
    && rm -rf /wheels

COPY . .
# The code is read-only to tasks; its bytecode is compiled here (PYTHONDONTWRITEBYTECODE
# is set: every CLI command would compile it again). The data dir is the server's
# alone (closed to tasks at start: TASKRUN_ISOLATION).
RUN mkdir -p data tasks && chmod 0711 data \
    && python -m compileall -q app.py pages taskrun

# The server runs as root so that tasks run as "task", walled off from its data dir,
# key and environment; Compose drops every capability it does not need.
# hadolint ignore=DL3002,DL3066
USER 0
EXPOSE 8501
VOLUME ["/app/data", "/app/tasks"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/api/system/health', timeout=4)"]
ENTRYPOINT ["tini", "--"]
CMD ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501"]
