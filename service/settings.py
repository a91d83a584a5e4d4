"""The one reader of the environment: every setting is ``FMNIST_<NAME>``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class FaultInjection(BaseModel):
    """Test only (``FMNIST_FAULT_INJECTION``, JSON): makes the trainer process fail on purpose in a job with this
    ``seed``, right after an attempt (``attempt`` only, or every one) reported epoch ``after_epoch`` or a later
    one (a resumed attempt fails again at its first epoch).

    ``raise`` raises a RuntimeError; ``oserror`` an OSError (which the retry policy retries); ``abort`` calls
    ``abort()``; ``kill`` sends the process SIGKILL; ``out_of_bounds_index`` reads past the end of a tensor,
    which on a GPU is a device-side assert that poisons the CUDA context (an IndexError on the CPU).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["raise", "oserror", "abort", "kill", "out_of_bounds_index"]
    seed: int
    after_epoch: int = Field(default=1, ge=1)
    attempt: int | None = Field(default=None, ge=1)


class Settings(BaseSettings):
    """Service configuration, from environment variables prefixed ``FMNIST_``."""

    model_config = SettingsConfigDict(env_prefix="FMNIST_", extra="ignore")

    home: Path = Field(default=Path("var"), description="Folder for the SQLite database and checkpoints.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite at $FMNIST_HOME/fmnist.db."
    )
    artifacts: Literal["folder", "database"] = Field(
        default="folder",
        description="Where checkpoints, ONNX exports and resume states are kept: files under $FMNIST_HOME "
        "(folder; several machines then share that folder) or rows of the database (database; a fleet then "
        "shares only the database URL).",
    )
    data_dir: Path | None = Field(
        default=None, description="Folder with the four Fashion-MNIST IDX files (raw or .gz, flat or FashionMNIST/raw)."
    )
    download: bool = Field(default=False, description="Let torchvision fetch the official files when missing.")
    lease_seconds: float = Field(default=30.0, ge=2.0, le=3600.0, description="Worker lease on a running job.")
    max_attempts: int = Field(default=3, ge=1, le=100, description="Claims a job gets before it fails for good.")
    poll_seconds: float = Field(default=0.5, gt=0.0, le=60.0, description="Idle worker's wait between queue polls.")
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="Largest accepted image upload.")
    max_predict_files: int = Field(default=64, ge=1, le=1024, description="Most images in one /v1/predict request.")
    max_request_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="Largest request body (all of a request's uploads together)."
    )
    keep_alive_seconds: int = Field(
        default=75,
        ge=1,
        le=3600,
        description="How long `fmnist serve` keeps an idle HTTP connection open for the client's next request. "
        "Longer than a load balancer's idle timeout (60 s on AWS's) and than clients' own idle expiry (httpx: 5 s), "
        "so the client or proxy, not the server, closes an idle connection: a server closing it as a request "
        "arrives on it resets that request (the client sees a connection reset, not an answer).",
    )
    predict_max_batch: int = Field(
        default=256, ge=1, le=65536, description="Most images one batched forward pass takes (micro-batching)."
    )
    predict_max_wait_ms: float = Field(
        default=0.5,
        ge=0.0,
        le=1000.0,
        description="How long a batch waits for more requests to join it, while requests arrive together "
        "(0.5 ms measured best on 2 cores at 32 connections; the README's serving section).",
    )
    predict_max_queue: int = Field(
        default=2048,
        ge=1,
        le=1_000_000,
        description="Most images waiting for a forward pass; past it, /v1/predict answers 503 with Retry-After at once "
        "(load shedding: the requests it takes stay fast). 2048 is about 140 ms of work for 2 CPU cores at the "
        "batch forms' measured 15,000 images/s: 8 clients sending 256 images at a time are all served.",
    )
    owner_only_reads: bool = Field(
        default=False,
        description="With API keys, each key reads only the jobs, sweeps and studies it created (another's is a 404 "
        "and listings leave it out); admin keys read everything. Off: every key with the train scope reads all.",
    )
    predict_loop_max: int = Field(
        default=32,
        ge=0,
        le=65536,
        description="Most images of a batch processed on the event loop itself while the batching thread is idle "
        "(no thread hand-off: measured in the README); 0 sends every batch to the thread.",
    )
    predict_fast_path: bool = Field(
        default=True,
        description="Answer POST /v1/predict on its dedicated ASGI path (service/api/fast_predict.py); false sends "
        "every request through FastAPI's generic handling: the same answers, slower.",
    )
    max_image_pixels: int = Field(default=40_000_000, ge=28 * 28, description="Largest accepted image, in pixels.")
    model_cache_size: int = Field(default=8, ge=1, description="Checkpoints kept loaded by the API.")
    predict_threads: int = Field(
        default=1,
        ge=1,
        le=256,
        description="CPU threads per forward pass in the API (more only pay off for large models and batches).",
    )
    predict_device: str = Field(
        default="auto", description="Where the API runs predictions: auto (the first GPU, else the CPU), cpu, cuda:N."
    )
    cuda_graphs: bool = Field(default=True, description="Capture training steps as CUDA graphs on a GPU.")
    pack_max: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Most queued jobs of one shape a worker slot claims at once and trains together as one stacked "
        "model (a pack: models/packed.py); 1 trains every job alone.",
    )
    gpu_memory_fraction: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="Share of a GPU's memory one worker's trainer process may allocate (1: no cap). Past it, a job "
        "fails with CUDA's out-of-memory message and the worker goes on.",
    )
    fault_injection: FaultInjection | None = Field(
        default=None, description="Test only: a JSON object making the trainer process fail on purpose."
    )
    max_sweep_size: int = Field(default=64, ge=1, le=10_000, description="Most grid points one sweep may hold.")
    gc_keep_best: int = Field(
        default=3,
        ge=1,
        le=100_000,
        description="Retention (`fmnist gc`, POST /v1/admin/gc): the models each sweep and each ended study keeps, "
        "best first by validation accuracy (test accuracy without one); at least 1, the search's winner.",
    )
    gc_keep_latest: int = Field(
        default=3,
        ge=0,
        le=100_000,
        description="Retention: the newest models each sweep and each ended study keeps as well (0: the best only).",
    )

    api_keys: SecretStr = Field(
        default=SecretStr(""),
        description="Comma-separated admin API keys from the environment (bootstrap); more with `fmnist keys create`.",
    )
    max_queued_per_key: int = Field(
        default=100, ge=1, description="Most queued jobs one API key may have; past it, 429 with Retry-After."
    )
    queue_retry_after_seconds: int = Field(default=30, ge=1, description="Retry-After sent with that 429.")
    rate_limit_predict: str = Field(
        default="",
        description="Requests one API key (without keys, one client address) may make with the predict scope, in the "
        "`limits` notation ('100/second', '6000 per minute'); past it, 429. Empty: no limit.",
    )
    rate_limit_train: str = Field(
        default="",
        description="Submissions (POST /v1/jobs, /v1/sweeps, /v1/studies) one API key (or client address) may make, "
        "in the same notation ('10/minute'); past it, 429. Empty: no limit.",
    )
    events_poll_seconds: float = Field(
        default=0.5, gt=0.0, le=60.0, description="How often a live event stream looks at its job in the database."
    )
    max_event_streams: int = Field(
        default=100, ge=1, le=100_000, description="Most live event streams one API process holds open (503 past it)."
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines as text, or one JSON object per line (with request and job ids)."
    )
    cors_origins: str = Field(
        default="", description="Comma-separated origins allowed to call the API from a browser; none by default."
    )

    @field_validator("rate_limit_predict", "rate_limit_train")
    @classmethod
    def _one_rate_limit(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if not value:
            return value
        from limits import parse_many  # 50 ms to import: only where a limit is set

        try:
            parsed = parse_many(value)
        except ValueError:
            parsed = []
        if len(parsed) != 1 or parsed[0].amount < 1:
            raise ValueError(
                f"FMNIST_{str(info.field_name).upper()}={value!r} is not a rate limit: write one amount (at least 1) "
                "per period, as in '100/second', '10 per minute' or '1000/hour' (periods: second, minute, hour, day, "
                "month, year), or leave it empty for none"
            )
        return value

    @property
    def environment_api_keys(self) -> list[str]:
        return [key.strip() for key in self.api_keys.get_secret_value().split(",") if key.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        # Absolute paths, so that a worker started from another folder finds the same files.
        self.home = self.home.expanduser().resolve()
        if self.data_dir is not None:
            self.data_dir = self.data_dir.expanduser().resolve()
        return self

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'fmnist.db'}"

    @property
    def checkpoint_dir(self) -> Path:
        return self.home / "checkpoints"

    @property
    def dataset_cache_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def resume_dir(self) -> Path:
        return self.home / "resume"

    @property
    def queue_signal_path(self) -> Path:
        return self.home / "queue.signal"


@lru_cache
def get_settings() -> Settings:
    return Settings()
