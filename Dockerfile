# qqbot-gateway: `docker build -t qqbot-gateway .` then
#   docker run --rm -e QQBOT_APP_ID=... -e QQBOT_CLIENT_SECRET_FILE=/run/secrets/qq \
#     -v $PWD/secret:/run/secrets/qq:ro -p 8080:8080 qqbot-gateway
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    QQBOT_HTTP_ADDR=0.0.0.0:8080 \
    QQBOT_LOG_FORMAT=json \
    QQBOT_STATE_DIR=/var/lib/qqbot-gateway

# An unprivileged user with a fixed uid/gid, matching runAsUser in deploy/kubernetes.
RUN groupadd --system --gid 10001 qqbot \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin qqbot \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/qqbot-gateway

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY qqbot_gateway ./qqbot_gateway
# The webhook extra (Ed25519 from cryptography): one image for both transports. DL3013 ("pin
# versions in pip") does not apply: this installs the checkout itself, and its dependencies are
# pinned in ranges in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[webhook]" \
 && rm -rf /src

WORKDIR /
USER 10001:10001
# The session store (see QQBOT_STATE_DIR): mount a volume here so that a new container resumes
# the session the previous one left.
VOLUME ["/var/lib/qqbot-gateway"]
EXPOSE 8080
# The webhook receiver (QQBOT_TRANSPORT=webhook, QQBOT_WEBHOOK_ADDR): never the side port.
EXPOSE 8443

# For plain Docker / Compose; Kubernetes ignores it and uses the probes in the StatefulSet.
# It probes /healthz where QQBOT_HTTP_ADDR puts the side server (docker run -e
# QQBOT_HTTP_ADDR=0.0.0.0:9090 moves the probe too) and fails exactly when /healthz does.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-m", "qqbot_gateway.healthcheck"]

ENTRYPOINT ["qqbot-gateway"]
CMD ["run"]
