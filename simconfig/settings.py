"""Settings from the environment (and an optional .env), validated once at start."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine.market import (
    CURRENT_MODEL,
    DEFAULT_ASSET_PARAMS,
    DEFAULT_EPOCH,
    DEFAULT_TICK_S,
    AssetParams,
    MarketParams,
)
from engine.strategies import STRATEGIES

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class SettingsError(Exception):
    """A missing or malformed setting; the message is one line naming it."""


class Settings(BaseSettings):
    """Every knob of simengine. Names are the environment variables, case-insensitive."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    database_url: str = Field(
        repr=False,
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        description="Postgres DSN (postgresql://user:pass@host:port/db).",
    )
    redis_url: str = Field(
        repr=False, default="redis://127.0.0.1:6379/0", description="Redis URL for arq."
    )
    # The market settings (SIM_SEED, SIM_TICK_S, SIM_EPOCH, SIM_START_PRICES, SIM_VOLATILITY) only
    # choose what the first `simctl migrate` stores; unset they are None, never a default, so a
    # process can tell "not given" from "given and different from the stored market".
    sim_seed: int | None = Field(
        default=None,
        ge=0,
        lt=2**63,
        description="Seed the first migrate stores for the market and the runs (unset: drawn at random).",
    )
    sim_lease_s: int = Field(
        default=60,
        ge=1,
        le=86_400,
        description="How long a claimed batch stays claimed, counted from its oldest slot (a late one: at least a sixth of it, 5 s to the lease, from the claim).",
    )
    sim_admin_keys_sha256: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="Comma-separated hex SHA-256 digests of accepted admin keys."
    )
    sim_admin_key: str | None = Field(
        repr=False, default=None, description="The admin key simctl users presents."
    )
    sim_tick_s: int | None = Field(
        default=None, ge=1, le=86_400, description="Tick length the first migrate stores (60)."
    )
    sim_epoch: datetime | None = Field(
        default=None,
        description="Epoch the first migrate stores (2024-01-01T00:00:00Z): the model starts at the start prices then.",
    )
    sim_start_prices: Annotated[dict[str, Decimal] | None, NoDecode] = Field(
        default=None,
        description="Start prices the first migrate stores, as ASSET=PRICE,... (defaults: BTC=65000,ETH=3200,USDT=1,USDC=1,XRP=0.55,ADA=0.45).",
    )
    sim_volatility: Annotated[dict[str, Decimal] | None, NoDecode] = Field(
        default=None,
        description="Annualised volatilities the first migrate stores, as ASSET=VOL,... (defaults: BTC=0.65,ETH=0.85,XRP=0.80,ADA=0.95).",
    )
    sim_slippage_bps: int = Field(
        default=5, ge=0, le=1000, description="Fill price offset from the market price."
    )
    sim_default_strategy: str = Field(
        default="random", description="Strategy of users with none set."
    )
    sim_max_trades_per_run: int = Field(
        default=3, ge=0, le=50, description="Upper bound of the random strategy."
    )
    sim_batch_size: int = Field(
        default=400,
        ge=1,
        le=5000,
        description="Users per job (a job's queue and transaction overheads are paid once per batch).",
    )
    sim_scheduler_interval_ms: int = Field(
        default=500, ge=10, le=60_000, description="Pause between scheduler passes."
    )
    sim_claim_stall_s: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="A scheduler's /readyz reports not ready when none of its claim attempts got the claim lock (or found the queue full) for this long.",
    )
    sim_checkpoint_interval_s: int = Field(
        default=900,
        ge=0,
        le=7 * 86_400,
        description="A scheduler takes a checkpoint of the engine's history when none started within this many seconds (0 = never on its own; `simctl checkpoint` still works). Reconcile's cost follows the rows written since the latest one.",
    )
    sim_checkpoint_rows: int = Field(
        default=1_000_000,
        ge=0,
        le=1_000_000_000,
        description="A scheduler also takes a checkpoint as soon as this many engine rows (runs, trades and ledger rows) were written after the latest checkpoint's cut, so reconcile never has more than about this many to sum (0 = by time only; needs SIM_CHECKPOINT_INTERVAL_S > 0).",
    )
    sim_history_lease_s: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="A checkpoint or prune renews the history lease as it works; one silent this long (killed, stalled) is taken over by the next.",
    )
    sim_history_database_url: str | None = Field(
        repr=False,
        default=None,
        description="Postgres URL for checkpoints, reconcile and prune, which keep a session's temporary table across short transactions: set it to the primary when DATABASE_URL goes through PgBouncer in transaction mode (unset: DATABASE_URL).",
    )
    sim_max_queued_jobs: int = Field(
        default=32, ge=1, le=100_000, description="Scheduler stops claiming above this queue depth."
    )
    sim_max_failures: int = Field(
        default=5, ge=1, le=100, description="Failed attempts before a user is auto-paused."
    )
    sim_retry_base_s: int = Field(
        default=5,
        ge=1,
        le=3600,
        description="First backoff after a failed run (doubles each time).",
    )
    sim_worker_concurrency: int = Field(
        default=4, ge=1, le=256, description="Jobs one worker runs at once."
    )
    sim_worker_poll_ms: int = Field(
        default=5,
        ge=1,
        le=10_000,
        description="How often an idle job slot looks for work (arq poll delay); a finished job's slot waits up to this long.",
    )
    sim_job_timeout_s: int = Field(default=120, ge=1, le=3600, description="arq job timeout.")
    sim_pg_statement_cache_size: int = Field(
        default=100,
        ge=0,
        le=10_000,
        description="Prepared statements cached per worker/scheduler connection (asyncpg); 0 behind PgBouncer in transaction mode.",
    )
    sim_shutdown_s: int = Field(default=20, ge=1, le=600, description="Grace period on SIGTERM.")
    sim_growth_sample_s: int = Field(
        default=300,
        ge=10,
        le=86_400,
        description="How often the scheduler records the size of the tables the engine writes (sim_growth_samples: catalogue reads, a few ms); `simctl status` shows growth per day and the days left of `integer` ids from these samples.",
    )
    sim_queue_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="arq queue name; unset, `simengine:` and the first 12 hex digits of the database's identity (every deployment its own queue, even on a shared Redis).",
    )
    sim_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65_535,
        description="Port of /metrics, /livez (alive) and /readyz (Postgres and Redis answer) for this process (0 = off); one per process, a busy one is exit 2.",
    )
    sim_metrics_host: str = Field(
        default="127.0.0.1", description="Address the metrics endpoint binds to."
    )
    sim_migrate_lock_timeout_ms: int = Field(
        default=3000,
        ge=10,
        le=600_000,
        description="migrate: how long one statement waits for a lock before it gives up and retries.",
    )
    sim_migrate_attempts: int = Field(
        default=5,
        ge=1,
        le=100,
        description="migrate: attempts per step on lock timeouts before it exits 1, nothing of that step applied.",
    )
    sim_prune_batch: int = Field(
        default=5000,
        ge=1,
        le=100_000,
        description="simctl prune: the most rows one batch deletes (a range of the primary key, its own transaction); each batch is sized to SIM_PRUNE_BATCH_MS, between 10 rows (or this, if smaller) and this.",
    )
    sim_prune_batch_ms: int = Field(
        default=250,
        ge=1,
        le=60_000,
        description="simctl prune: the time budget of one batch's transaction; the next batch's rows grow (at most 2x) or shrink (at most 4x) by how long the last one held, so a batch stays this short whatever the rows' width or the server's load.",
    )
    sim_prune_duty: float = Field(
        default=0.1,
        gt=0.0,
        le=1.0,
        description="simctl prune: the share of wall time the pruner may work; after a batch that took t, it pauses t x (1 - duty) / duty (at least SIM_PRUNE_PAUSE_MS). 1 = only SIM_PRUNE_PAUSE_MS between batches.",
    )
    sim_prune_pause_ms: int = Field(
        default=50,
        ge=0,
        le=10_000,
        description="simctl prune: the least pause between two batches, so the engine's writes and vacuum keep up (every pause at most a third of SIM_HISTORY_LEASE_S).",
    )
    sim_prune_max_s: int = Field(
        default=3600,
        ge=1,
        le=7 * 86_400,
        description="simctl prune: run-time bound; a prune that reaches it stops after its batch (the views stay exact) and the next prune goes on from there.",
    )
    sim_log_level: str = Field(default="info", description="debug, info, warning or error.")
    sim_log_json: bool | None = Field(
        default=None, description="JSON logs; default: JSON unless on a terminal."
    )

    @field_validator("sim_admin_keys_sha256", mode="before")
    @classmethod
    def _split_digests(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(p.strip().lower() for p in value.split(",") if p.strip())
        if isinstance(value, (tuple, list)):
            for digest in value:
                if not isinstance(digest, str) or not _HEX64.match(digest.lower()):
                    raise ValueError("expected comma-separated 64-character hex SHA-256 digests")
            return tuple(d.lower() for d in value)
        return value

    @field_validator("sim_start_prices", "sim_volatility", mode="before")
    @classmethod
    def _parse_asset_map(cls, value: object) -> object:
        return parse_asset_map(value) if isinstance(value, str) else value

    @field_validator("database_url", "sim_history_database_url")
    @classmethod
    def _check_pg_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("postgresql", "postgres"):
            raise ValueError("expected a postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("expected a redis:// URL")
        return value

    @field_validator("sim_default_strategy")
    @classmethod
    def _check_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown strategy; expected one of {', '.join(sorted(STRATEGIES))}")
        return value

    @field_validator("sim_log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        if value.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("expected debug, info, warning or error")
        return value.lower()

    @field_validator("sim_epoch")
    @classmethod
    def _check_epoch(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a time zone, e.g. 2024-01-01T00:00:00Z")
        return value

    @property
    def history_database_url(self) -> str:
        """Where checkpoints, reconcile and prune connect (a session connection)."""
        return self.sim_history_database_url or self.database_url

    def queue_name(self, deployment_id: str) -> str:
        """The arq queue of the deployment whose database identity is `deployment_id`
        (store.runs.deployment_id): SIM_QUEUE_NAME when set, else derived from the identity.
        Every enqueuer and consumer (scheduler, worker, `simctl run`, `status`, bench) asks
        here, so they agree."""
        if self.sim_queue_name is not None:
            return self.sim_queue_name
        return "simengine:" + deployment_id.replace("-", "")[:12]

    def with_queue(self, deployment_id: str) -> Settings:
        """These settings with the queue name resolved for `deployment_id` (processes resolve
        it once at start, then read `sim_queue_name`)."""
        return self.model_copy(update={"sim_queue_name": self.queue_name(deployment_id)})

    def market_params(
        self, seed: int | None = None, model_version: int = CURRENT_MODEL
    ) -> MarketParams:
        """The market definition these settings choose for a new database: what is unset takes
        the defaults, and an unset SIM_SEED takes `seed` (the first migrate draws one with
        `secrets`). Running processes never use this: they read the stored definition."""
        chosen_seed = self.sim_seed if self.sim_seed is not None else seed
        if chosen_seed is None:
            raise ValueError("SIM_SEED is unset and no seed was given")
        prices = self.sim_start_prices or {}
        vols = self.sim_volatility or {}
        assets = {
            asset: AssetParams(
                start_price_usd=prices.get(asset, base.start_price_usd),
                annual_vol=vols.get(asset, base.annual_vol),
                stable=base.stable,
            )
            for asset, base in DEFAULT_ASSET_PARAMS.items()
        }
        return MarketParams(
            seed=chosen_seed,
            tick_s=self.sim_tick_s if self.sim_tick_s is not None else DEFAULT_TICK_S,
            epoch=self.sim_epoch if self.sim_epoch is not None else DEFAULT_EPOCH,
            assets=assets,
            model_version=model_version,
        )


def parse_asset_map(value: str) -> dict[str, Decimal]:
    """ASSET=NUMBER,... into a map of positive Decimals; ValueError naming the problem."""
    parsed: dict[str, Decimal] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        asset, sep, number = part.partition("=")
        asset = asset.strip().upper()
        if not sep or asset not in DEFAULT_ASSET_PARAMS:
            raise ValueError(
                f"expected ASSET=NUMBER pairs with ASSET in {sorted(DEFAULT_ASSET_PARAMS)}"
            )
        try:
            parsed[asset] = Decimal(number.strip())
        except ArithmeticError:
            raise ValueError(f"{number.strip()!r} is not a number") from None
        if not parsed[asset].is_finite() or parsed[asset] <= 0:
            raise ValueError(f"{asset} must be a positive number")
    return parsed


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs and output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def load_settings() -> Settings:
    """Build the Settings, turning a validation error into one line naming the setting."""
    try:
        return Settings()
    except UnicodeDecodeError as exc:
        # Only the .env file is decoded here (the environment is already text).
        raise SettingsError(
            f"configuration error: .env: not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]).upper() if err["loc"] else "settings"
        raise SettingsError(f"configuration error: {name}: {err['msg']}") from None
