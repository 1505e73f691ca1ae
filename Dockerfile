# tlsgate for device labs. Same command as natively: `tlsgate run ...`.
# Linted by hadolint and checked against docker-compose.yml and `tlsgate run --help` (tests/live/test_container.py).
FROM python:3.12.12-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TLSGATE_CONFDIR=/app/certs

WORKDIR /app

# Dependencies first, from the hash-pinned lock, so code changes do not reinstall them.
COPY requirements.lock ./
RUN python -m pip install --require-hashes --no-deps -r requirements.lock

COPY pyproject.toml README.md ./
COPY tlsgate ./tlsgate
COPY policies ./policies
RUN python -m pip install --no-deps --no-build-isolation . \
    && groupadd --system --gid 10001 tlsgate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /app tlsgate \
    && mkdir -p /app/certs /data \
    && chown 10001:10001 /app/certs /data \
    && chmod 0700 /app/certs

USER 10001:10001

# The CA survives restarts in its own volume (TLSGATE_CONFDIR above); findings go to /data.
VOLUME ["/app/certs", "/data"]
# 8080: the proxy (--listen-port); 9464: /metrics, /healthz, /readyz (--metrics-port).
# WireGuard (for apps that ignore the proxy) is UDP 51820, not --listen-port: to serve it, add
# "--mode", "regular", "--mode", "wireguard" to the CMD below and to docker-compose.yml's command (identical),
# publish 51820:51820/udp there, and print a phone's config with `tlsgate wireguard show NAME --qr --endpoint LAN-IP`.
EXPOSE 8080 9464

# /healthz answers 200 while the process serves; urlopen raises (exit 1) on anything else. No curl in slim.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=3)"]

ENTRYPOINT ["tlsgate"]
# Inside the container tlsgate must listen on all interfaces, for the proxy and for Prometheus; clients
# from public addresses are still refused (mitmproxy's block_global stays on: no --allow-public-clients),
# so publishing the port on a LAN is not an open proxy. docker-compose.yml runs the same command.
CMD ["run", "--listen-host", "0.0.0.0", "--listen-port", "8080", "--metrics-host", "0.0.0.0", "--metrics-port", "9464", "--policy", "policies/", "--findings", "/data/findings.jsonl"]
