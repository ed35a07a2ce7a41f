# The flowrun server. Alone it serves a SQLite file in the /data volume:
#   docker build -t flowrun . && docker run -p 8000:8000 -v flowrun-data:/data flowrun
# docker-compose.yml runs three of it on PostgreSQL behind nginx (docs/deploy.md).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY flowrun ./flowrun
RUN pip install . && rm -rf build ./*.egg-info
COPY examples ./examples

# Run as an unprivileged user; /data (its home) holds the SQLite database.
RUN useradd --system --user-group --uid 10001 --home-dir /data --create-home \
        --shell /usr/sbin/nologin flowrun
USER flowrun
WORKDIR /data
EXPOSE 8000

# flowrun drains on SIGTERM for FLOWRUN_SHUTDOWN_GRACE_S (10 s): stop with a longer
# timeout (docker stop -t 30, or stop_grace_period in compose).
CMD ["flowrun", "serve", "--host", "0.0.0.0", "--port", "8000", "--db", "/data/flowrun.db", "--workflows", "/app/examples"]
