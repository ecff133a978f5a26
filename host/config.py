"""The daemon's configuration: one TOML file, checked completely before anything starts.

`load(path)` returns a `DaemonConfig` or raises `ConfigError` listing every problem with its
key and line (`packsentry config check FILE` prints them). Every key has a default except the
sources; an empty file is a valid config that ingests nothing. docs/daemon.md is the reference.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .alarm_settings import AlarmSettings, AlarmSettingsError

DEFAULT_TOPICS = ("packsentry/+/+/birth", "packsentry/+/+/data", "packsentry/+/+/status")


@dataclass(frozen=True)
class SerialConfig:
    port: str
    baud: int = 921_600
    site: str = "local"  # the site a serial board reports under (MQTT boards name theirs)
    reopen_s: float = 1.0  # how often a vanished port is looked for again


@dataclass(frozen=True)
class MqttConfig:
    url: str = "mqtt://127.0.0.1:1883"  # mqtts:// for TLS
    client_id: str = "packsentry-daemon"
    username: str | None = None
    password: str | None = None
    password_file: str | None = None  # read at start; keeps the secret out of the config
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False  # skip hostname checks (test rigs only)
    topics: tuple[str, ...] = DEFAULT_TOPICS
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 86_400  # the broker queues QoS 1 frames this long while we are down
    # unacknowledged messages the broker may have in flight to us. PUBACKs wait for the
    # commit, so this bounds what the daemon holds: twice daemon.batch_max lets the next
    # micro-batch arrive while one is processed (at batch_max the broker waited for each
    # commit: batch-frame ingest 79 -> 83 k samples/s, median of 3 runs each)
    receive_maximum: int = 4_000
    receiver: str = "process"  # where paho runs: "process" (its own core) or "thread"


@dataclass(frozen=True)
class TraceConfig:
    path: str


@dataclass(frozen=True)
class StorageConfig:
    path: str = "packsentry.db"
    synchronous: str = "full"  # "full": an acked frame survives power loss; "normal": a crash
    retention_days: float = 0.0  # raw samples older than this are downsampled; 0 = keep all
    downsample_s: int = 60
    estimate_every_s: int = 600  # an estimate row at least this often per unit (board time)


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    timeout_s: float = 5.0
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DaemonConfig:
    storage: StorageConfig = field(default_factory=StorageConfig)
    serial: tuple[SerialConfig, ...] = ()
    mqtt: MqttConfig | None = None
    trace: tuple[TraceConfig, ...] = ()
    keys: Mapping[int, bytes] = field(default_factory=dict)  # board id -> HMAC key
    alarms: AlarmSettings = field(default_factory=AlarmSettings)
    webhooks: tuple[WebhookConfig, ...] = ()
    log_alarms: bool = True
    mqtt_alarms: bool = True  # alarm messages on the broker (when [mqtt] is set)
    log_level: str = "info"
    queue_size: int = 20_000  # frames between the sources and the processor
    batch_max: int = 2_000  # frames per micro-batch (one transaction)
    # how long a micro-batch waits to fill. 0: it takes what is queued. Frames pile up while
    # a batch is processed and committed, so batches grow with the load by themselves (a
    # group commit); a fixed wait only added itself to every alarm's latency (20 ms: p50
    # 101 ms at 10 000 frames/s, 0: 17 ms)
    batch_wait_ms: int = 0
    gap_settle_s: float = 30.0  # a seq gap not shrinking this long is given up (frames lost)


class ConfigError(Exception):
    def __init__(self, path: str, problems: list[tuple[str, int | None, str]]) -> None:
        self.path = path
        self.problems = problems  # (key, line or None, message)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.path}:{line or '-'}: {key}: {msg}" for key, line, msg in self.problems]


# -- loading ---------------------------------------------------------------------------------

_SECTIONS = {"daemon", "storage", "serial", "mqtt", "trace", "keys", "alarms", "notify"}
_DAEMON_KEYS = {"log_level", "queue_size", "batch_max", "batch_wait_ms", "gap_settle_s"}
_LOG_LEVELS = ("debug", "info", "warning", "error")


def load(path: str | Path) -> DaemonConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [("-", None, f"cannot read: {exc.strerror}")]) from None
    return parse(text, str(path), base=path.parent)


def parse(text: str, name: str = "<config>", base: Path | None = None) -> DaemonConfig:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(name, [("-", int(m.group(1)) if m else None,
                                  f"not valid TOML: {exc}")]) from None
    c = _Checker(_key_lines(text))
    c.unknown("", doc, _SECTIONS)
    d = doc.get("daemon", {})
    c.unknown("daemon", d, _DAEMON_KEYS)
    base_defaults = DaemonConfig()
    daemon_kw: dict[str, Any] = {}
    for key in _DAEMON_KEYS:
        if key in d:
            daemon_kw[key] = c.typed(f"daemon.{key}", d[key], type(getattr(base_defaults, key)))
    if daemon_kw.get("log_level", "info") not in _LOG_LEVELS:
        c.add("daemon.log_level", f"must be one of {', '.join(_LOG_LEVELS)}")
    for key in ("queue_size", "batch_max"):
        if daemon_kw.get(key, 1) < 1:
            c.add(f"daemon.{key}", "must be >= 1")
    if daemon_kw.get("batch_wait_ms", 0) < 0:
        c.add("daemon.batch_wait_ms", "must be >= 0")

    storage = c.section("storage", doc.get("storage", {}), StorageConfig)
    if storage is not None:
        if storage.synchronous not in ("full", "normal"):
            c.add("storage.synchronous", 'must be "full" or "normal"')
        if storage.retention_days < 0 or storage.downsample_s < 1:
            c.add("storage.retention_days" if storage.retention_days < 0
                  else "storage.downsample_s", "must be positive")
        if base and not Path(storage.path).is_absolute():
            storage = dataclasses.replace(storage, path=str(base / storage.path))

    serial = tuple(s for i, t in enumerate(c.table_list("serial", doc))
                   if (s := c.section(f"serial[{i}]", t, SerialConfig)) is not None)
    ports = [s.port for s in serial]
    for p in {p for p in ports if ports.count(p) > 1}:
        c.add("serial", f"port {p} is listed twice")
    trace = tuple(s for i, t in enumerate(c.table_list("trace", doc))
                  if (s := c.section(f"trace[{i}]", t, TraceConfig)) is not None)

    mqtt = None
    if "mqtt" in doc:
        mqtt = c.section("mqtt", doc["mqtt"], MqttConfig)
        if mqtt is not None:
            u = urlsplit(mqtt.url)
            if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
                c.add("mqtt.url", f"{mqtt.url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
            for key in ("ca_file", "cert_file", "key_file", "password_file"):
                f = getattr(mqtt, key)
                if f and base and not Path(f).is_absolute():
                    mqtt = dataclasses.replace(mqtt, **{key: str(base / f)})
            if mqtt.password_file and not Path(mqtt.password_file).is_file():
                c.add("mqtt.password_file", f"{mqtt.password_file}: no such file")
            if not mqtt.topics:
                c.add("mqtt.topics", "at least one topic filter is needed")
            if mqtt.receiver not in ("process", "thread"):
                c.add("mqtt.receiver", f"{mqtt.receiver!r}: expected \"process\" or \"thread\"")

    keys: dict[int, bytes] = {}
    for board, hexkey in doc.get("keys", {}).items():
        k = f"keys.{board}"
        try:
            board_id = int(board, 0)
            if not 0 <= board_id < 2**32:
                raise ValueError
        except ValueError:
            c.add(k, "a board id (decimal or 0x hex, 32 bits) is expected as the key name")
            continue
        try:
            key = bytes.fromhex(hexkey) if isinstance(hexkey, str) else b""
        except ValueError:
            key = b""
        if len(key) < 16:
            c.add(k, "expected the board's HMAC key as hex, at least 16 bytes (32 hex digits)")
            continue
        keys[board_id] = key

    alarms = AlarmSettings()
    try:
        alarms = AlarmSettings.from_mapping(doc.get("alarms", {}))
    except AlarmSettingsError as exc:
        for key, msg in exc.problems:
            c.add(key if key.startswith("alarms") else f"alarms.{key}", msg)

    notify = doc.get("notify", {})
    c.unknown("notify", notify, {"log", "mqtt", "webhook"})
    webhooks = tuple(w for i, t in enumerate(c.table_list("webhook", notify, "notify.webhook"))
                     if (w := c.section(f"notify.webhook[{i}]", t, WebhookConfig)) is not None)
    for i, w in enumerate(webhooks):
        if urlsplit(w.url).scheme not in ("http", "https"):
            c.add(f"notify.webhook[{i}].url", f"{w.url!r}: expected an http:// or https:// URL")
    flags = {k: c.typed(f"notify.{k}", notify[k], bool) for k in ("log", "mqtt") if k in notify}

    if c.problems:
        raise ConfigError(name, c.problems)
    return DaemonConfig(storage=storage or StorageConfig(), serial=serial, mqtt=mqtt, trace=trace,
                        keys=keys, alarms=alarms, webhooks=webhooks,
                        log_alarms=flags.get("log", True), mqtt_alarms=flags.get("mqtt", True),
                        **daemon_kw)


class _Checker:
    """Collects problems instead of stopping at the first: an operator fixes them in one go."""

    def __init__(self, lines: dict[str, int]) -> None:
        self.lines = lines
        self.problems: list[tuple[str, int | None, str]] = []

    def add(self, key: str, msg: str) -> None:
        line = self.lines.get(key)
        probe = key
        while line is None and ("." in probe or "[" in probe):  # the nearest enclosing table
            probe = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", probe)
            line = self.lines.get(probe)
        self.problems.append((key, line, msg))

    def unknown(self, prefix: str, table: Any, known: set[str]) -> None:
        if not isinstance(table, dict):
            self.add(prefix, "must be a table")
            return
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.add(f"{prefix}.{key}" if prefix else key, f"unknown key{hint}")

    def typed(self, key: str, value: Any, want: Any) -> Any:
        ok = {bool: lambda v: isinstance(v, bool),
              int: lambda v: isinstance(v, int) and not isinstance(v, bool),
              float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
              str: lambda v: isinstance(v, str)}
        if want is float and ok[int](value):
            return float(value)
        if not ok[want](value):
            self.add(key, f"expected {want.__name__}, got {type(value).__name__} {value!r}")
            return None
        return value

    def table_list(self, name: str, doc: dict, key: str | None = None) -> list[dict]:
        value = doc.get(name, [])
        if isinstance(value, dict):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.add(key or name, f"expected [[{key or name}]] tables")
            return []
        return value

    def section(self, prefix: str, table: Any, cls: type) -> Any:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        self.unknown(prefix, table, set(fields))
        if not isinstance(table, dict):
            return None
        kw: dict[str, Any] = {}
        bad = False
        for name, value in table.items():
            if name not in fields:
                continue
            ann = str(fields[name].type)
            key = f"{prefix}.{name}"
            if ann.startswith("tuple[str"):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    self.add(key, "expected a list of strings")
                    bad = True
                    continue
                kw[name] = tuple(value)
            elif ann.startswith("Mapping[str, str]"):
                if not isinstance(value, dict) or not all(isinstance(v, str)
                                                          for v in value.values()):
                    self.add(key, "expected a table of strings")
                    bad = True
                    continue
                kw[name] = dict(value)
            else:
                want = {"int": int, "float": float, "bool": bool}.get(ann.split(" ")[0], str)
                v = self.typed(key, value, want)
                if v is None:
                    bad = True
                    continue
                if want in (int, float) and v < 0:
                    self.add(key, "must not be negative")
                    bad = True
                    continue
                kw[name] = v
        missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and n not in kw]
        for name in missing:
            if name not in table:
                self.add(prefix, f"missing required key {name!r}")
            bad = True
        return None if bad else cls(**kw)


def _key_lines(text: str) -> dict[str, int]:
    """Line of every table header and key, as dotted paths with [i] for arrays of tables.
    tomllib gives no positions; a line scan is enough for the files people write by hand."""
    lines: dict[str, int] = {}
    table = ""
    counts: dict[str, int] = {}
    for no, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        m = re.match(r"^\[\[\s*([^\]]+?)\s*\]\]", s)
        if m:
            name = _dotted(m.group(1))
            i = counts.get(name, 0)
            counts[name] = i + 1
            table = f"{name}[{i}]"
            lines.setdefault(name, no)
            lines[table] = no
            continue
        m = re.match(r"^\[\s*([^\]]+?)\s*\]", s)
        if m:
            table = _dotted(m.group(1))
            lines.setdefault(table, no)
            continue
        m = re.match(r'^("[^"]*"|[A-Za-z0-9_.\-\s"]+?)\s*=', s)
        if m:
            key = _dotted(m.group(1))
            full = f"{table}.{key}" if table else key
            lines.setdefault(full, no)
    return lines


def _dotted(name: str) -> str:
    return ".".join(part.strip().strip('"') for part in name.split("."))
