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
    TASKRUN_TASKS_DIR=/app/tasks

# tini is PID 1: it forwards signals to the server and reaps orphaned task processes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin taskrun

WORKDIR /app
COPY --from=build /wheels /wheels
COPY requirements.txt .
# The same install step as the README's run command, from the prebuilt wheels.
RUN pip install --no-cache-dir --no-index --find-links=/wheels -r requirements.txt \
    && rm -rf /wheels

COPY . .
# The service user owns only its state and the task scripts; the code stays root's.
# Its bytecode is compiled here (the code is read-only to the service, and
# PYTHONDONTWRITEBYTECODE is set): every CLI command would compile it again.
RUN mkdir -p data tasks && chown -R taskrun:taskrun data tasks \
    && python -m compileall -q app.py pages taskrun

USER 10001
EXPOSE 8501
VOLUME ["/app/data", "/app/tasks"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/api/system/health', timeout=4)"]
ENTRYPOINT ["tini", "--"]
CMD ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501"]
