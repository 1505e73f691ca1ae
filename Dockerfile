# tlsgate for device labs. Same command as natively: `tlsgate run ...`.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, from the hash-pinned lock, so code changes do not reinstall them.
COPY requirements.lock ./
RUN python -m pip install --require-hashes --no-deps -r requirements.lock

COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY policies ./policies
RUN python -m pip install --no-deps --no-build-isolation -e . \
    && useradd --system --uid 10001 --no-create-home --home-dir /app tlsgate \
    && mkdir -p /app/certs /data \
    && chown tlsgate:tlsgate /app/certs /data \
    && chmod 0700 /app/certs

USER tlsgate

# The CA survives restarts in its own volume; findings go to /data.
VOLUME ["/app/certs", "/data"]
EXPOSE 8080

ENTRYPOINT ["tlsgate"]
# Inside the container tlsgate must listen on all interfaces; clients from public addresses are still
# refused (mitmproxy's block_global stays on), so publishing the port on a LAN is not an open proxy.
CMD ["run", "--listen-host", "0.0.0.0", "--listen-port", "8080", "--policy", "policies/", "--findings", "/data/findings.jsonl"]
