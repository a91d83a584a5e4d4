# One image for the API and the worker. torch's wheels carry their CUDA libraries; a GPU host needs
# only the NVIDIA driver and container toolkit.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 FMNIST_HOME=/data
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY models ./models
COPY service ./service
COPY alembic ./alembic
RUN pip install -e .
VOLUME ["/data"]
EXPOSE 8000
CMD ["fmnist", "serve", "--host", "0.0.0.0", "--port", "8000"]
