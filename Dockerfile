# One image for everything maitred runs: the operator, the pools' routers and the simulator.
# Entrypoint `maitred`, so a pod says what to run with its args:
#   maitred operator ...      (the Helm chart's Deployment)
#   maitred router --configmap NS/NAME ...   (the router Deployments the operator writes)
#   maitred sim --model NAME ...             (simulated replicas, e.g. examples/sim-pool.yaml)
#
#   docker build -t maitred:dev .
#
# The base is pinned to one Python release on one Debian release; override PYTHON_IMAGE to pin it by
# digest (python:3.11.14-slim-bookworm@sha256:...) where builds must be reproducible.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# The dependencies first, from pyproject.toml alone, so that their layer is reused until they change;
# only the runtime ones: the demo's OpenAI SDK and httpx (the `demo` extra) stay out of the image.
COPY pyproject.toml .
RUN python -m venv /opt/maitred \
    && python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
       > /tmp/requirements.txt \
    && /opt/maitred/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt
# Then the source (.dockerignore lets in only what `pip install .` reads).
COPY . .
RUN /opt/maitred/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps . \
    && /opt/maitred/bin/pip uninstall --yes pip

FROM ${PYTHON_IMAGE}
# The same base in both stages, so the venv's interpreter path (/usr/local/bin/python3) holds.
COPY --from=build /opt/maitred /opt/maitred
ENV PATH=/opt/maitred/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Not root, by number so that runAsNonRoot can check it; pip compiled the bytecode at build time,
# so a read-only root filesystem costs nothing at start.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["maitred"]
CMD ["--help"]
