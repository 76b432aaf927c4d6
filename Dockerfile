# modelyard's images, one per component, each with only what it needs:
#
#   docker build --target operator -t modelyard/operator:$(version) .  # the Kopf operator
#   docker build --target server   -t modelyard/server:$(version) .    # the model server
#   docker build --target toolkit  -t modelyard/toolkit:$(version) .   # pipelines, drift, MLflow
#   docker build --target router   -t modelyard/router:$(version) .    # nginx, for canaries
#
# (hack/images.sh does this with buildah where there is no Docker engine.) Each image
# installs its component's hash-locked dependencies (locks/<extra>.txt, from its extra in
# pyproject.toml) and its component's code alone: the server has no Kopf, Evidently or
# operator code; the operator no MLflow, BentoML, scikit-learn or pandas.
#
# Contract (docs/contracts.md): non-root uid 10001 named modelyard, read-only root
# filesystem at run time (bytecode is compiled here) with only /tmp writable.
#
# BASE_IMAGE: any Debian bookworm image with python3 (3.11) and python3-venv. Where
# nothing can be pulled, hack/images.sh makes one with debootstrap.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- shared build pieces
FROM ${BASE_IMAGE} AS installer
# Build-time only (the build stages are in no image): a CA bundle for a TLS-inspecting
# proxy, which pip and uv then trust.
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never \
    SSL_CERT_FILE=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
# pip installs the pinned installer (uv, by hash) into a venv of the build stages only.
COPY locks/bootstrap.txt /src/locks/
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes -r /src/locks/bootstrap.txt \
 && python3 -m venv --without-pip /opt/modelyard
# Each image installs its lock, then its code (the package built from pyproject.toml,
# src/ and its component's folder): a code change rebuilds only the last layers.
ENV INSTALL_LOCK="/opt/build/bin/uv pip install --quiet --python /opt/modelyard/bin/python --compile-bytecode --require-hashes -r" \
    INSTALL_CODE="/opt/build/bin/uv pip install --quiet --python /opt/modelyard/bin/python --compile-bytecode --no-deps --no-build-isolation --no-cache /src"

FROM ${BASE_IMAGE} AS runtime
ENV PATH=/opt/modelyard/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A named user: libraries (kopf, getpass) look the uid up in /etc/passwd.
RUN groupadd --gid 10001 modelyard \
 && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin modelyard
WORKDIR /tmp

# ---------------------------------------------------------------- the operator
FROM installer AS operator-build
COPY locks/operator.txt /src/locks/
RUN $INSTALL_LOCK /src/locks/operator.txt
COPY pyproject.toml README.md /src/
COPY src /src/src
COPY operator /src/operator
RUN $INSTALL_CODE

FROM runtime AS operator
COPY --from=operator-build /opt/modelyard /opt/modelyard
USER 10001:10001
ENTRYPOINT ["modelyard", "operator"]
CMD ["--help"]

# ---------------------------------------------------------------- the model server
FROM installer AS server-build
COPY locks/server.txt /src/locks/
RUN $INSTALL_LOCK /src/locks/server.txt
COPY pyproject.toml README.md /src/
COPY src /src/src
COPY serving /src/serving
RUN $INSTALL_CODE

# The image every ModelDeployment runs: `modelyard serve` on port 3000.
FROM runtime AS server
COPY --from=server-build /opt/modelyard /opt/modelyard
ENV BENTOML_HOME=/tmp/bentoml BENTOML_DO_NOT_TRACK=True MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
EXPOSE 3000
# `modelyard serve` execs BentoML, which then runs as PID 1 and drains requests and
# flushes the prediction log on SIGTERM.
ENTRYPOINT ["modelyard", "serve"]
CMD ["--host", "0.0.0.0", "--port", "3000"]

# ---------------------------------------------------------------- the toolkit
FROM installer AS toolkit-build
COPY locks/pipelines.txt /src/locks/
RUN $INSTALL_LOCK /src/locks/pipelines.txt
COPY pyproject.toml README.md /src/
COPY src /src/src
COPY pipelines /src/pipelines
RUN $INSTALL_CODE

# Pipelines (`modelyard pipeline run`), drift checks (`modelyard drift check`) and the
# chart's MLflow tracking server (`mlflow server`).
FROM runtime AS toolkit
# pg_dump: `modelyard registry migrate` backs a PostgreSQL registry up before it migrates.
# Pinned (hack/base-packages.lock pins the rest): Debian's archive serves only its newest
# version, so when this one is gone the build fails here, naming it; update the pin.
ARG POSTGRESQL_CLIENT=postgresql-client-15=15.18-0+deb12u1
RUN apt-get update \
 && apt-get install --yes --no-install-recommends "$POSTGRESQL_CLIENT" \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
COPY --from=toolkit-build /opt/modelyard /opt/modelyard
ENV MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
ENTRYPOINT ["modelyard"]
CMD ["--help"]

# ---------------------------------------------------------------- the router
# nginx from Debian, in front of a ModelDeployment's versions during a canary or a shadow
# (operator/modelyard/operator/router.py renders its configuration into a ConfigMap,
# mounted at /etc/modelyard/router). No Python code of ours runs in it.
FROM runtime AS router
# Pinned like the base image's packages (hack/base-packages.lock): when Debian's archive no
# longer serves this version the build fails here, naming it.
ARG NGINX=nginx=1.22.1-9+deb12u9
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$NGINX" \
      >/dev/null \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /etc/nginx/sites-enabled/* \
 && nginx -V 2>&1 | head -1
USER 10001:10001
EXPOSE 8080
# SIGQUIT is nginx's graceful shutdown: requests in flight finish (SIGTERM drops them).
STOPSIGNAL SIGQUIT
ENTRYPOINT ["nginx", "-c", "/etc/modelyard/router/nginx.conf"]
