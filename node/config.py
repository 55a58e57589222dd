"""The node's configuration: one frozen object, loaded from TOML.

After Hypercorn's ``Config``: defaults here, the data dir's ``config.toml``
over them, then only the command-line flags that were actually typed.
Unknown keys are refused by name, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overlay import ROLES
from replication import PolicyError, PolicyParams, TrendError, TrendParams
from steering import BrokerError, BrokerParams

from .errors import UserError

LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_PORT = 7400


class ConfigError(UserError):
    pass


def parse_hostport(text: str, what: str, *, default_port: int | None = None) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (IPv4 address, or ``[v6]:port``) or raise ConfigError."""
    if not isinstance(text, str):
        raise ConfigError(f"{what} must be a string HOST:PORT, got {text!r}")
    if text.startswith("["):  # [v6]:port
        host, bracket, rest = text[1:].partition("]")
        sep, port_text = rest[:1], rest[1:]
        if not bracket or (rest and sep != ":"):
            raise ConfigError(f"{what} {text!r} is not [IPv6]:PORT (example: [2001:db8::1]:7400)")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep:
        if default_port is None:
            raise ConfigError(f"{what} {text!r} is not HOST:PORT (example: 192.0.2.10:7400)")
        host, port_text = (host if text.startswith("[") else text), str(default_port)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"{what} {text!r}: {host!r} is not an IP address (example: 192.0.2.10:7400)"
        ) from None
    if (address.version == 6) != text.startswith("["):
        raise ConfigError(f"{what} {text!r}: write an IPv6 address in brackets and an IPv4 "
                          f"address without (examples: [2001:db8::1]:7400, 192.0.2.10:7400)")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{what} {text!r}: port must be a number from 0 to 65535")
    return host, int(port_text)


@dataclass(frozen=True)
class Capacity:
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    memory_mb: int = 1024
    disk_gb: int = 10
    # Testing only: seconds each job holds its slot before it starts, to make a slow
    # node on purpose (tests/integration/test_steering_slow.py). 0 on a real site.
    start_delay: float = 0.0


@dataclass(frozen=True)
class DhtConfig:
    ksize: int = 20
    alpha: int = 3


@dataclass(frozen=True)
class ChannelConfig:
    # Largest message plaintext on the secure channel, in bytes.
    max_frame: int = 1024 * 1024
    # Seconds a peer gets to finish the handshake (slow-loris bound).
    handshake_timeout: float = 10.0
    max_connections: int = 1024
    # Calls one connection may have in flight before the node says overloaded.
    max_calls_per_connection: int = 1024


@dataclass(frozen=True)
class QueueSection:
    # Home set size: queue nodes that hold each job.
    replicas: int = 3
    # Seconds a worker's lease lasts without a heartbeat (it beats 4 times per lease).
    lease_duration: float = 60.0
    # Seconds before a job that no node can run is failed as unschedulable.
    unschedulable_after: float = 300.0
    # Seconds a home member may stay unreachable before it is replaced.
    repair_after: float = 120.0


@dataclass(frozen=True)
class StorageSection:
    # Disk the chunk store may use for dataset replicas, in GB (10^9 bytes).
    quota_gb: float = 10.0
    # Catalog nodes that keep each dataset's record.
    catalog_replicas: int = 3
    # Replicas of a dataset are announced in the DHT this often (seconds).
    announce_interval: float = 60.0


@dataclass(frozen=True)
class ReplicationSection:
    """Access trends and the replica policy (docs/replication.md says why these)."""

    # Seconds of one access bucket; buckets kept; Holt's level and slope smoothing;
    # buckets ahead the prediction looks.
    bucket_seconds: float = 300.0
    window: int = 12
    alpha: float = 0.5
    beta: float = 0.3
    horizon: int = 2
    # Predicted reads per bucket (all sites) one replica serves.
    reads_per_replica: float = 4.0
    # Reads within the window from a site without a replica that earn it one, and
    # that keep a site's replica wanted (below the first: no flapping).
    site_add_reads: float = 2.0
    site_keep_reads: float = 1.0
    # Seconds above the target before a replica is trimmed.
    cooldown: float = 43200.0
    # Seconds a holder may stay unseen and still count.
    grace: float = 120.0
    # Seconds a requested copy counts before it is asked again.
    add_timeout: float = 1800.0
    # New replicas per decision; nodes at this load (0-1) get none; free disk kept.
    max_adds: int = 2
    max_load: float = 0.9
    headroom: float = 0.1
    # Seconds between a custodian's decisions and between summaries to custodians.
    interval: float = 60.0
    # Replica copies this node pulls at once, and the MB/s they may fetch together.
    max_pulls: int = 2
    rate_mb_s: float = 100.0

    def trend_params(self) -> TrendParams:
        return TrendParams(bucket_seconds=self.bucket_seconds, window=self.window,
                           alpha=self.alpha, beta=self.beta, horizon=self.horizon)

    def policy_params(self) -> PolicyParams:
        return PolicyParams(
            reads_per_replica=self.reads_per_replica, site_add_reads=self.site_add_reads,
            site_keep_reads=self.site_keep_reads, cooldown=self.cooldown, grace=self.grace,
            add_timeout=self.add_timeout, max_adds=self.max_adds, max_load=self.max_load,
            headroom=self.headroom)


@dataclass(frozen=True)
class MonitorSection:
    # Seconds between samples of this node; samples kept in memory.
    interval: float = 10.0
    window: int = 60
    # Samples averaged into one row of the history in the state file; days kept.
    history_every: int = 6
    history_days: float = 7.0
    # HOST:PORT of /metrics (Prometheus); "auto": loopback, the listen port + 1000
    # (a random port when that is 0); "" turns it off.
    metrics_listen: str = "auto"
    # Seconds between probe jobs while this node is failing (it claims no jobs).
    probe_interval: float = 60.0
    # Release (steering.brokerage rule c): a stage-in at this node, while it is not ok,
    # that has lasted release_after seconds is given back to the queue when what is left
    # of it is longer than that and than release_gain x the whole of it at the nominal
    # rate of a transfer elsewhere (MB/s).
    release_after: float = 600.0
    release_gain: float = 2.0
    nominal_rate_mb_s: float = 100.0

    def broker_params(self) -> BrokerParams:
        return BrokerParams(release_after=self.release_after, release_gain=self.release_gain)


@dataclass(frozen=True)
class ConsoleSection:
    # HOST:PORT of the admin console (web pages and their JSON API); "auto":
    # loopback, the listen port + 2000 (a random port when that is 0); "" turns it off.
    listen: str = "auto"
    # A console on an address that is not loopback must be enabled here; the node
    # warns at start. Requests from other hosts are refused unless it is.
    allow_remote: bool = False


@dataclass(frozen=True)
class Config:
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    bootstrap: tuple[str, ...] = ()
    # Addresses other nodes should use; empty means the bound listen address
    # (unless that is 0.0.0.0 or ::, in which case peers use what they see).
    advertise: tuple[str, ...] = ()
    roles: tuple[str, ...] = ROLES
    log_level: str = "info"
    # Seconds between maintenance rounds: bucket refresh, peer discovery.
    refresh_interval: float = 10.0
    # Seconds between republications of this node's record, and its lifetime.
    record_refresh: float = 60.0
    record_ttl: int = 600
    capacity: Capacity = field(default_factory=Capacity)
    dht: DhtConfig = field(default_factory=DhtConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    queue: QueueSection = field(default_factory=QueueSection)
    storage: StorageSection = field(default_factory=StorageSection)
    replication: ReplicationSection = field(default_factory=ReplicationSection)
    monitor: MonitorSection = field(default_factory=MonitorSection)
    console: ConsoleSection = field(default_factory=ConsoleSection)
    # Labels this node offers jobs (a job's requirement "labels" must be among them).
    labels: tuple[str, ...] = ()

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_hostport(self.listen, "listen")

    def metrics_address(self, listen_port: int) -> str:
        """Where /metrics listens ("" when off)."""
        return _auto_address(self.monitor.metrics_listen, listen_port, 1000)

    def console_address(self, listen_port: int) -> str:
        """Where the admin console listens ("" when off)."""
        return _auto_address(self.console.listen, listen_port, 2000)

    @property
    def bootstrap_addresses(self) -> list[tuple[str, int]]:
        return [parse_hostport(b, "bootstrap", default_port=DEFAULT_PORT)
                for b in self.bootstrap]


def _auto_address(text: str, listen_port: int, offset: int) -> str:
    """``text``, or for "auto" loopback at the listen port + ``offset`` (random when
    the listen port is 0 or that would pass 65535)."""
    if text != "auto":
        return text
    port = listen_port + offset if listen_port and listen_port + offset <= 65535 else 0
    return f"127.0.0.1:{port}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_SECTIONS = {"capacity": Capacity, "dht": DhtConfig, "channel": ChannelConfig,
             "queue": QueueSection, "storage": StorageSection,
             "replication": ReplicationSection, "monitor": MonitorSection,
             "console": ConsoleSection}


def _check_type(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool) or isinstance(value, bool):
        ok = type(value) is type(default)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and math.isfinite(value)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int)
    elif isinstance(default, tuple):
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        kind = ("a list of strings" if isinstance(default, tuple)
                else "a finite number" if isinstance(default, float) else type(default).__name__)
        raise ConfigError(f"config key {key!r} must be {kind}, got {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        raise ConfigError(f"config key {key!r} must not be negative, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(sorted(prefix + k for k in fields))
            raise ConfigError(f"unknown config key {name!r} (known keys: {known})")
        if key in _SECTIONS and cls is Config:
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r} must be a table")
            values[key] = _build(_SECTIONS[key], value, f"{name}.")
            continue
        f = fields[key]
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory())  # type: ignore[operator]
        values[key] = _check_type(name, value, default)
    return cls(**values)


def validate(cfg: Config) -> Config:
    cfg.listen_address  # noqa: B018 - raises ConfigError when malformed
    cfg.bootstrap_addresses  # noqa: B018
    for a in cfg.advertise:
        parse_hostport(a, "advertise")
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, "
                          f"got {cfg.log_level!r}")
    unknown = [r for r in cfg.roles if r not in ROLES]
    if unknown:
        raise ConfigError(f"unknown role {unknown[0]!r} (known roles: {', '.join(ROLES)})")
    if len(set(cfg.roles)) != len(cfg.roles):
        raise ConfigError(f"roles repeat a role: {list(cfg.roles)!r}")
    if cfg.refresh_interval <= 0 or cfg.record_refresh <= 0:
        raise ConfigError("refresh_interval and record_refresh must be positive")
    if cfg.record_ttl <= cfg.record_refresh:
        raise ConfigError("record_ttl must be longer than record_refresh")
    if not 1 <= cfg.dht.ksize <= 64 or not 1 <= cfg.dht.alpha <= cfg.dht.ksize:
        raise ConfigError("dht.ksize must be 1-64 and dht.alpha 1-ksize")
    q = cfg.queue
    if (not 1 <= q.replicas <= 15 or q.lease_duration < 1 or q.unschedulable_after <= 0
            or q.repair_after <= 0):
        raise ConfigError("queue.replicas must be 1-15, queue.lease_duration at least 1 s, "
                          "queue.unschedulable_after and queue.repair_after positive")
    if cfg.capacity.cores < 0 or any(not 0 < len(x) <= 128 for x in cfg.labels):
        raise ConfigError("capacity.cores must not be negative and labels 1-128 characters")
    if not (math.isfinite(cfg.capacity.start_delay) and 0 <= cfg.capacity.start_delay <= 3600):
        raise ConfigError("capacity.start_delay must be 0-3600 seconds (testing only: 0 on a "
                          "real site)")
    st = cfg.storage
    if not 1 <= st.catalog_replicas <= 15 or st.announce_interval < 1:
        raise ConfigError("storage.catalog_replicas must be 1-15 and storage.announce_interval "
                          "at least 1 s")
    rep = cfg.replication
    try:
        rep.trend_params()
        rep.policy_params()
    except (TrendError, PolicyError) as exc:
        raise ConfigError(f"replication.{exc}") from None
    if not (rep.interval > 0 and rep.max_pulls >= 1 and rep.rate_mb_s > 0):
        raise ConfigError("replication.interval, max_pulls and rate_mb_s must be positive")
    if rep.grace <= st.announce_interval:
        raise ConfigError(f"replication.grace ({rep.grace:g} s) must be longer than "
                          f"storage.announce_interval ({st.announce_interval:g} s), or every "
                          f"holder would count as lost between two announcements")
    mon = cfg.monitor
    if not (mon.interval > 0 and 2 <= mon.window <= 100_000 and mon.history_every >= 1
            and mon.history_days > 0 and mon.probe_interval > 0):
        raise ConfigError("monitor.interval, history_days and probe_interval must be positive, "
                          "monitor.window 2-100000 and history_every at least 1")
    try:
        mon.broker_params()
    except BrokerError as exc:
        raise ConfigError(f"monitor.{exc}") from None
    if not (math.isfinite(mon.nominal_rate_mb_s) and mon.nominal_rate_mb_s > 0):
        raise ConfigError("monitor.nominal_rate_mb_s must be positive")
    if mon.metrics_listen not in ("", "auto"):
        parse_hostport(mon.metrics_listen, "monitor.metrics_listen")
    con = cfg.console
    if con.listen not in ("", "auto"):
        host, _ = parse_hostport(con.listen, "console.listen")
        if not _loopback(host) and not con.allow_remote:
            raise ConfigError(f"console.listen {con.listen} is not a loopback address: set "
                              f"console.allow_remote = true to serve the console to other hosts")
    ch = cfg.channel
    if not 4096 <= ch.max_frame <= 64 * 1024 * 1024:
        raise ConfigError("channel.max_frame must be 4096-67108864 bytes")
    if ch.handshake_timeout <= 0 or ch.max_connections < 1 or ch.max_calls_per_connection < 1:
        raise ConfigError("channel.handshake_timeout, max_connections and "
                          "max_calls_per_connection must be positive")
    return cfg


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the TOML file (if it exists), then typed flags."""
    data: dict[str, Any] = {}
    if path is not None and path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    typed = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return validate(_build(Config, {**data, **typed}, ""))
    except ConfigError as exc:
        error = exc
    # Say where the bad value is: in the file, or else in the typed flags.
    try:
        validate(_build(Config, data, ""))
    except ConfigError as exc:
        raise ConfigError(f"{exc} in {path}" if path is not None else str(exc)) from None
    raise ConfigError(f"{error} (from the command line)" if typed else str(error)) from None


def render_config(cfg: Config) -> str:
    """The TOML that ``gridnode init`` writes (every key, with its value)."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, tuple):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return repr(v)

    lines = ["# gridnode node configuration; unknown keys are refused.", ""]
    sections = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            sections.append((f.name, value))
        else:
            lines.append(f"{f.name} = {fmt(value)}")
    for name, section in sections:
        lines += ["", f"[{name}]"]
        lines += [f"{g.name} = {fmt(getattr(section, g.name))}"
                  for g in dataclasses.fields(section)]
    return "\n".join(lines) + "\n"
