# The modelyard toolkit image: the operator, the MLflow tracking server, the pipelines
# and drift checks (`modelyard ...` and `mlflow ...`). The model server has its own
# image (serving/Dockerfile); both share the build stage below, so a layer-caching
# builder builds the dependencies once.
#
# BASE_IMAGE: any Debian bookworm image with python3 (3.11) and python3-venv. Where
# nothing can be pulled, hack/images.sh makes one with debootstrap.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# Build-time only (not in the final image): a CA bundle for a TLS-inspecting proxy.
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
RUN python3 -m venv /opt/modelyard
COPY pyproject.toml constraints.txt README.md /src/
COPY src /src/src
COPY operator /src/operator
COPY serving /src/serving
COPY pipelines /src/pipelines
# The package goes in as a wheel, the same artifact a release ships, with pinned
# dependencies; pip precompiles the bytecode (the root filesystem is read-only at run
# time). pip itself is removed afterwards: nothing installs anything at run time.
# This stage is the same in Dockerfile and serving/Dockerfile, so a layer-caching
# builder builds it once for both images.
RUN /opt/modelyard/bin/pip wheel --no-deps --wheel-dir /wheels /src \
 && for wheel in /wheels/modelyard-*.whl; do \
      /opt/modelyard/bin/pip install -c /src/constraints.txt "$wheel[drift,postgres]"; \
    done \
 && /opt/modelyard/bin/python -m pip uninstall --yes pip

FROM ${BASE_IMAGE}
COPY --from=build /opt/modelyard /opt/modelyard
ENV PATH=/opt/modelyard/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root; the pods add a read-only root filesystem with /tmp writable.
# A named user: libraries (kopf, getpass) look the uid up in /etc/passwd.
RUN groupadd --gid 10001 modelyard \
 && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin modelyard
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["modelyard"]
CMD ["--help"]
