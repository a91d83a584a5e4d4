# One image for the API, the worker and the migration. torch's wheels carry their CUDA libraries; a GPU host
# needs only the NVIDIA driver (one recent enough for the CUDA that torch's wheel names) and the NVIDIA
# container toolkit.
#
# Reproducible: every package is installed at the exact version and sha256 of requirements.lock (`make lock`
# regenerates it from the versions the test suite ran with), as wheels only (nothing compiled at build
# time), on a base image fixed to Python 3.11 and Debian 12 (pin it by digest, `@sha256:...`, for a
# byte-identical base). Only what .dockerignore lets through reaches the build.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FMNIST_HOME=/data
WORKDIR /app

# Dependencies first: this layer is rebuilt only when the lock changes, not with every code change.
COPY requirements.lock ./
RUN pip install --require-hashes --only-binary=:all: -r requirements.lock

# The code, installed in place: migrations find alembic/ beside the package, the dashboard's templates and
# static files are read from service/api/web/.
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY models ./models
COPY service ./service
RUN pip install --no-deps --no-build-isolation -e . && pip check

# matplotlib's font cache (the figures), built once here, readable by the user below, instead of in every
# new container at start-up.
ENV MPLCONFIGDIR=/app/.matplotlib
RUN python -c "import matplotlib.font_manager"

# Not root: a stranger who gets code execution through the API gets an unprivileged user, who can write
# only the data volume.
RUN useradd --create-home --uid 10001 --user-group fmnist && mkdir -p /data && chown fmnist:fmnist /data
USER fmnist
VOLUME ["/data"]
EXPOSE 8000

# For the API (the default command): ready once the database answers at the current schema. Compose turns
# it off for the worker and the migration, which serve no HTTP.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]

CMD ["fmnist", "serve", "--host", "0.0.0.0", "--port", "8000"]
