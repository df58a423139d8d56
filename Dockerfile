# The runlease server: the package and its runtime dependencies only (no test toolchain),
# run by an unprivileged user, its state on the /data volume.
#
#   docker build -t runlease .
#   docker run -d --name runlease --stop-timeout 30 -v runlease-data:/data runlease
#   docker exec runlease runlease status
#
# Agents outside the container need a TCP listener with TLS (see README, "Remote agents
# and TLS"): append the serve options, e.g.
#   docker run ... -p 7070:7070 -v ./certs:/certs:ro runlease serve --data-dir /data \
#     --listen unix:/data/runlease.sock --listen tcp://0.0.0.0:7070 \
#     --tls-cert /certs/server.pem --tls-key /certs/server.key
# The web dashboard and /metrics: add `--http 0.0.0.0:8080` (HTTPS with the same
# --tls-cert/--tls-key) and publish it with -p 8080:8080.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package is built from; the image gets the installed package, not the tree.
COPY pyproject.toml README.md /tmp/runlease/
COPY src /tmp/runlease/src
RUN pip install /tmp/runlease && rm -rf /tmp/runlease

# The data directory belongs to the service user and nobody else (the socket in it is the
# operator's door: whoever can open it acts as the operator).
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home runlease \
    && mkdir /data && chown runlease:runlease /data && chmod 700 /data
VOLUME /data
USER runlease
# `runlease status` and the other commands inside the container find the socket here.
ENV RUNLEASE_HOME=/data

# The TCP listener's and the dashboard's ports when they are configured as above.
EXPOSE 7070 8080
# SIGTERM starts the graceful stop (requests in flight, final snapshot): give `docker stop`
# more than the server's 10 s grace (--stop-timeout 30).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s CMD ["runlease", "status"]
ENTRYPOINT ["runlease"]
CMD ["serve", "--data-dir", "/data", "--listen", "unix:/data/runlease.sock"]
