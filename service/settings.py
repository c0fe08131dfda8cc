"""Service settings: one typed object read from NPID_* environment variables and an optional `.env`.

    NPID_COLLECTION_ROOT=/data/images NPID_ARTIFACTS_DIR=/data/index NPID_API_KEY=... npid serve

Every field below is `NPID_<NAME>`; lists (CORS origins) are comma-separated. A missing or wrong value
is reported as one readable `SettingsError`, never a stack trace.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from PIL import Image
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


class SettingsError(ValueError):
    """The settings cannot start a service; the message says which variable to fix."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NPID_", env_file=".env", extra="ignore")

    # --- data ---
    collection_root: Path  # the image folder the index refers to (ids -> relative paths under it)
    artifacts_dir: Path  # the index store: versions and the `current` pointer
    upload_subdir: str = "uploads"  # POST /images writes under <collection_root>/<upload_subdir>/

    # --- engine ---
    device: str = "cpu"  # cpu | cuda | cuda:N, where the live model runs
    poll_interval_s: float = Field(2.0, gt=0)  # how often the `current` pointer is checked
    # CPU throughput setting (docs/service-benchmark.md): one intra-op thread per model call and one call
    # per core. On a quiet machine, more threads per call cut the latency of a lone query.
    inference_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)  # model calls at once
    torch_threads: int = Field(1, ge=0)  # intra-op threads per model call; 0 = torch's default (all cores)

    # --- upload limits ---
    max_upload_bytes: int = Field(10 * MiB, ge=1)  # per file; the request body may add multipart overhead
    max_pixels: int = Field(40_000_000, ge=1)  # width x height, checked from the header before decoding
    thumbnail_px: int = Field(160, ge=16, le=1024)  # longest side of GET /images/{id}/thumbnail
    decode_threads: int = Field(2, ge=1)  # image decodes at once (uploads, thumbnails): docs/decode-benchmark.md
    decode_pixel_budget: int = Field(40_000_000, ge=1)  # pixels all running decodes may hold together

    # --- access ---
    api_key: SecretStr | None = None  # X-API-Key for mutating endpoints; unset: they answer 403
    protect_reads: bool = False  # true: reads need the API key too
    rate_limit_per_minute: float = Field(120.0, ge=0)  # per client on /search, /similar, uploads; 0 = off
    rate_limit_burst: int = Field(20, ge=1)  # requests a client may send at once before the limit bites
    thumbnail_rate_limit_per_minute: float = Field(1200.0, ge=0)  # per client on thumbnails (a page asks k)
    thumbnail_rate_limit_burst: int = Field(200, ge=1)
    cors_origins: Annotated[list[str], NoDecode] = []  # e.g. "https://a.example,https://b.example"

    # --- operations ---
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    redis_url: str = "redis://localhost:6379/0"  # broker of the training jobs (its password is masked in logs)

    # --- background jobs (service/jobs/store.py, service/jobs/pipeline.py) ---
    train_device: str = "auto"  # where the worker trains: auto | cpu | cuda | cuda:N
    train_config: Path | None = None  # YAML/JSON of TrainConfig fields: the jobs' recipe defaults
    cpu_train_minutes: float = Field(4.0, gt=0)  # CPU-only hosts: train this long (recipe.CPU_TRAIN_MINUTES)
    worker_threads: int = Field(0, ge=0)  # torch threads of a job; 0 = all cores but one (the API's), all before v1
    keep_training: bool = True  # `npid up`: after the first version, go on training and publish improvements
    improve_margin: float = Field(1.0, ge=0)  # points of self-retrieval top-1 a background version must gain
    jobs_lock_ttl_s: float = Field(60.0, gt=1)  # a running job's lease; a dead worker's job fails after it
    jobs_heartbeat_s: float = Field(5.0, gt=0)  # how often a running job renews its lease and progress
    jobs_time_limit_s: float = Field(48 * 3600.0, gt=0)  # a job running longer stops and fails (resumable)
    jobs_history: int = Field(100, ge=1, le=10_000)  # job records kept (GET /jobs); older ones are dropped

    # --- folder watcher (service/watch/, `npid watch`) ---
    watch: bool = True  # notice files added, replaced, moved or removed under collection_root and index them
    watch_debounce_s: float = Field(1.0, gt=0)  # a file is read once its size and mtime held still this long
    watch_rescan_s: float = Field(60.0, gt=0)  # full rescan period: the fallback where no events arrive (NFS, ...)
    watch_batch: int = Field(256, ge=1)  # files embedded and published as one version at a time
    watch_lock_ttl_s: float = Field(30.0, gt=1)  # the one watcher's Redis lock; a second watcher waits for it

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [o.strip() for o in v.split(",") if o.strip()]
        return v

    @field_validator("collection_root", "artifacts_dir")
    @classmethod
    def _existing_dir(cls, v: Path) -> Path:
        if not v.is_dir():
            raise ValueError(f"{v} is not an existing directory")
        return v.resolve()

    @field_validator("upload_subdir")
    @classmethod
    def _plain_subdir(cls, v: str) -> str:
        if not v or "/" in v or "\\" in v or v.startswith("."):
            raise ValueError("must be a plain folder name")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.max_pixels > Image.MAX_IMAGE_PIXELS:
            raise ValueError(f"max_pixels must be <= Pillow's MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS})")
        if self.protect_reads and self.api_key is None:
            raise ValueError("protect_reads needs an api_key (NPID_API_KEY)")
        return self

    def masked(self) -> dict[str, Any]:
        """Every setting, secrets masked: safe to log."""
        out = self.model_dump()
        out["api_key"] = None if self.api_key is None else "***"
        parts = urlsplit(self.redis_url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            parts = parts._replace(netloc=netloc)
        out["redis_url"] = urlunsplit(parts)
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and .env), overrides winning; a `SettingsError` lists every problem."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            name = "NPID_" + str(err["loc"][0]).upper() if err["loc"] else "settings"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing":
                msg = "required (set it in the environment or .env)"
            lines.append(f"  {name}: {msg}")
        raise SettingsError("invalid service settings:\n" + "\n".join(lines)) from None
