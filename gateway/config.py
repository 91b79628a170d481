"""The gateway's configuration: one TOML file, validated with pydantic, secrets from the
environment.

- Every key is checked; an error names the key (``routes[1].signatures``), the line of
  the file it is on, and what is allowed. All errors are reported at once.
- Environment variables override the file: ``CPIMGW_<SECTION>__<KEY>``, nested with
  ``__`` (``CPIMGW_ADAPTERS__XMPP__SECRET`` sets ``[adapters.xmpp] secret``), so secrets
  need not be written into the file (pydantic-settings).
- Each ``[adapters.NAME]`` section is validated by that adapter's own ``config_model``,
  loaded through the ``cpimgw.adapters`` entry points like any plugin (DESIGN.md rule 6);
  ``kind`` picks the adapter and defaults to NAME.
- Relative paths are relative to the directory of the config file.

Durations are seconds, or a number with a unit: ``500ms``, ``30s``, ``10m``, ``2h``, ``1d``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography import x509
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from adapters.contract import Adapter, AdapterConfig, load
from canonical.errors import AdapterError, ConfigError
from gateway.core import DeliveryPolicy
from gateway.routing import Route, RoutingTable, check_pattern, split_address
from gateway.security import Rules, parse_patterns

ENV_PREFIX = "CPIMGW_"

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: object) -> object:
    """``30``, ``"30s"``, ``"10m"``, ``"1.5h"`` -> seconds; anything else is left to pydantic."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError("a duration is a number of seconds or a number with ms, s, m, h or d")
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Section):
    id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        description="this gateway's id in transport histories (letters, digits, . _ : -)",
    )
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        default="auto",
        description='"uvloop" (pip install cpimgw[speed]) is faster; "auto" uses it when installed',
    )


class StoreSection(_Section):
    backend: Literal["sqlite", "memory", "redis"] = "sqlite"
    path: Path = Path("cpimgw.sqlite3")
    synchronous: Literal["full", "normal"] = "full"
    dedup_window: Duration = 3600.0
    poll_interval: Duration = 1.0
    # backend = "redis" (several nodes share it; docs/scaling.md)
    url: str = Field(default="redis://127.0.0.1:6379/0", pattern=r"^(redis|rediss|unix)://")
    namespace: str = Field(default="cpimgw", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    replicas: int = Field(default=0, ge=0, description="acknowledge once N replicas have it")
    replica_timeout: Duration = 1.0


class ClusterSection(_Section):
    """This node among several sharing a Redis store (``[store] backend = "redis"``)."""

    node: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    heartbeat: Duration = 2.0
    ttl: Duration = 10.0
    claim_idle: Duration = 60.0
    recover_interval: Duration = 5.0
    resync: Duration = 300.0
    # adapters that must run on one node at a time (e.g. an XMPP component): a Redis lease
    exclusive: list[str] = []


class DeliverySection(_Section):
    initial_backoff: Duration = 1.0
    max_backoff: Duration = 300.0
    multiplier: float = Field(default=2.0, ge=1.0)
    jitter: float = Field(default=0.5, ge=0.0, le=1.0)
    max_attempts: int = Field(default=12, ge=1)
    expiry: Duration = 86400.0
    presence_expiry: Duration = 300.0
    concurrency: int = Field(default=256, ge=1)
    send_timeout: Duration = 30.0
    drain_timeout: Duration = 20.0


class RouteSection(_Section):
    match: str | list[str] = Field(description="domain patterns: example.com, *.example.com, *")
    adapter: str
    scheme: Literal["sip", "sips", "xmpp", "im", "pres"] | None = None
    domain: str | None = None
    signatures: Literal["off", "verify", "require"] = "off"
    honours: list[str] = []


class SecuritySection(_Section):
    allow: list[str] = []
    deny: list[str] = []
    peers: dict[str, list[str]] = {}
    max_size: int = Field(default=1024 * 1024, ge=1)
    rate: float = Field(
        default=20.0, ge=0, description="messages per second per sender; 0 = no limit"
    )
    burst: float = Field(default=40.0, ge=1)
    freshness: Duration = 600.0
    skew: Duration = 60.0
    trust: list[Path] = []
    author: Literal["match", "signed", "off"] = Field(
        default="match",
        description="a CPIM From that is not the sender: refused (match), allowed when signed "
        "by that author on a verify/require route (signed), or only recorded (off)",
    )


class LoopSection(_Section):
    seen_window: Duration = 30.0


class PresenceSection(_Section):
    min_interval: Duration = 5.0
    watcher_rate: float = Field(default=2.0, gt=0)
    watcher_burst: float = Field(default=20.0, ge=1)


class MetricsSection(_Section):
    enabled: bool = True
    listen: str = Field(
        default="127.0.0.1:9464",
        pattern=r"^(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):\d{1,5}$",
        description="host:port such as 127.0.0.1:9464 or [::1]:9464",
    )


class LoggingSection(_Section):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"
    trace: list[str] = []


class Settings(BaseSettings):
    """The whole file. ``adapters`` stays raw here; each adapter's model checks it."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    gateway: GatewaySection
    store: StoreSection = StoreSection()
    cluster: ClusterSection = ClusterSection()
    delivery: DeliverySection = DeliverySection()
    security: SecuritySection = SecuritySection()
    loop: LoopSection = LoopSection()
    presence: PresenceSection = PresenceSection()
    metrics: MetricsSection = MetricsSection()
    logging: LoggingSection = LoggingSection()
    adapters: dict[str, dict[str, Any]] = {}
    routes: list[RouteSection] = []

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)  # the environment wins over the file


@dataclass(frozen=True, slots=True)
class AdapterSetup:
    """One configured adapter instance: its class and its validated section."""

    name: str
    kind: str
    cls: type[Adapter]
    config: AdapterConfig


@dataclass(frozen=True, slots=True)
class Config:
    """A checked configuration, ready to build a gateway from."""

    file: Path
    settings: Settings
    adapters: Mapping[str, AdapterSetup]
    trust: tuple[x509.Certificate, ...]

    @property
    def store_path(self) -> Path:
        return _resolve(self.file, self.settings.store.path)

    def routing(self) -> RoutingTable:
        return RoutingTable(routes_of(self.settings))

    def rules(self) -> Rules:
        sec = self.settings.security
        return Rules(
            allow=parse_patterns(sec.allow, key="security.allow"),
            deny=parse_patterns(sec.deny, key="security.deny"),
            peers={k: tuple(v) for k, v in sec.peers.items()},
            max_size=sec.max_size,
            rate=sec.rate,
            burst=sec.burst,
            freshness=sec.freshness,
            skew=sec.skew,
            trust=self.trust,
            author=sec.author,
        )

    def delivery(self) -> DeliveryPolicy:
        return DeliveryPolicy(**self.settings.delivery.model_dump())

    def listen(self) -> tuple[str, int]:
        host, _, port = self.settings.metrics.listen.rpartition(":")
        return host.strip("[]"), int(port)


def routes_of(settings: Settings) -> list[Route]:
    out: list[Route] = []
    for section in settings.routes:
        patterns = [section.match] if isinstance(section.match, str) else section.match
        out.extend(
            Route(
                pattern=check_pattern(pattern),
                adapter=section.adapter,
                scheme=section.scheme,
                domain=section.domain,
                signatures=section.signatures,
                honours=frozenset(section.honours),
            )
            for pattern in patterns
        )
    return out


def _resolve(file: Path, path: Path) -> Path:
    return path if path.is_absolute() else (file.parent / path)


# -- where a key is in the file ----------------------------------------------------------

_TABLE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_ARRAY_TABLE = re.compile(r"^\s*\[\[\s*([^\[\]]+?)\s*\]\]\s*(#.*)?$")
_KEY = re.compile(
    r'^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\'))*)\s*='
)

Loc = tuple[str | int, ...]


def _split_key(text: str) -> list[str]:
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_-]+)', text)
    return [a or b or c for a, b, c in parts]


def locate(text: str) -> dict[Loc, int]:
    """Map each table and key path of a TOML text to its 1-based line (best effort:
    continuation lines of multi-line values are skipped, array items map to their key)."""
    lines: dict[Loc, int] = {}
    counts: dict[tuple[str, ...], int] = {}
    current: Loc = ()
    depth = 0
    in_string: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_string is not None:
            if in_string in line:
                in_string = None
            continue
        if depth > 0:
            depth += line.count("[") - line.count("]")
            continue
        if match := _ARRAY_TABLE.match(line):
            path = tuple(_split_key(match.group(1)))
            index = counts.get(path, 0)
            counts[path] = index + 1
            current = (*path, index)
            lines.setdefault(current, number)
            lines.setdefault(path, number)
            continue
        if match := _TABLE.match(line):
            current = tuple(_split_key(match.group(1)))
            lines.setdefault(current, number)
            continue
        if match := _KEY.match(line):
            key = (*current, *_split_key(match.group(1)))
            lines.setdefault(key, number)
            value = line[match.end() :].strip()
            for quote in ('"""', "'''"):
                if value.startswith(quote) and value.count(quote) == 1:
                    in_string = quote
            if value.startswith("["):
                depth = value.count("[") - value.count("]")
    return lines


def line_of(lines: Mapping[Loc, int], loc: Loc) -> int | None:
    """The line of the longest prefix of ``loc`` found in the file."""
    for end in range(len(loc), 0, -1):
        found = lines.get(tuple(loc[:end]))
        if found is not None:
            return found
    return None


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model whose fields are allowed at ``loc`` (for "allowed keys" in messages)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        current = next(
            (a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)),
            annotation,
        )
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


class ConfigFileError(ConfigError):
    """Every problem found in one config file (each a :class:`ConfigError`)."""

    def __init__(self, file: str, problems: Sequence[ConfigError]) -> None:
        super().__init__(f"{len(problems)} problem(s) in {file}", file=file)
        self.problems = list(problems)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def _problems(
    exc: ValidationError,
    *,
    file: str,
    lines: Mapping[Loc, int],
    model: type[BaseModel],
    prefix: Loc = (),
    env_keys: Iterable[Loc] = (),
) -> list[ConfigError]:
    from_env = set(env_keys)
    out = []
    for error in exc.errors():
        loc: Loc = (*prefix, *error["loc"])
        kind = error["type"]
        message = error["msg"]
        hint = ""
        if kind == "extra_forbidden":
            parent = _model_at(model, tuple(error["loc"])[:-1])
            message = "unknown key"
            if parent is not None:
                hint = "allowed keys: " + ", ".join(parent.model_fields)
        elif kind == "missing":
            message = "required key is missing"
        else:
            parent = _model_at(model, tuple(error["loc"])[:-1])
            field = None if parent is None else parent.model_fields.get(str(error["loc"][-1]))
            if field is not None and field.description:
                hint = f"allowed: {field.description}"
        line = line_of(lines, loc)
        if any(loc[: len(k)] == k for k in from_env):
            message += (
                f" (from environment variable {ENV_PREFIX}{'__'.join(map(str, loc)).upper()})"
            )
        out.append(ConfigError(message, key=dotted(loc), line=line, file=file, hint=hint))
    return out


def _env_keys() -> list[Loc]:
    """Key paths set from the environment (to say so in error messages)."""
    return [
        tuple(p.lower() for p in name[len(ENV_PREFIX) :].split("__"))
        for name in os.environ
        if name.upper().startswith(ENV_PREFIX)
    ]


def _dangling_routes(
    data: Mapping[str, Any], *, file: str, lines: Mapping[Loc, int]
) -> list[ConfigError]:
    """Routes naming unconfigured adapters, read from the raw file: reported together with
    schema errors, so one run of ``config check`` shows both."""
    adapters = data.get("adapters")
    names = set(adapters) if isinstance(adapters, dict) else set()
    names |= {str(k[1]) for k in _env_keys() if len(k) > 1 and k[0] == "adapters"}
    routes = data.get("routes")
    out = []
    for index, route in enumerate(routes if isinstance(routes, list) else []):
        target = route.get("adapter") if isinstance(route, dict) else None
        if isinstance(target, str) and target not in names:
            loc: Loc = ("routes", index, "adapter")
            out.append(
                ConfigError(
                    f"adapter {target!r} is not configured",
                    key=dotted(loc),
                    line=line_of(lines, loc),
                    file=file,
                    hint=f"configured adapters: {', '.join(sorted(names)) or 'none'}",
                )
            )
    return out


def _decode_env_json(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Adapter keys set from the environment arrive as text (the settings cannot know an
    adapter's key types); a JSON list or table there is decoded, so
    ``CPIMGW_ADAPTERS__SIP__CREDENTIALS='[{"username": "gw", "password": "..."}]'`` works."""
    from_env = {k.upper() for k in os.environ if k.upper().startswith(ENV_PREFIX)}
    for key, value in raw.items():
        variable = f"{ENV_PREFIX}ADAPTERS__{name}__{key}".upper()
        if isinstance(value, str) and value.lstrip()[:1] in ("[", "{") and variable in from_env:
            with contextlib.suppress(ValueError):
                raw[key] = json.loads(value)
    return raw


def parse(text: str, *, file: str = "<config>", base: Path | None = None) -> Config:
    """Check a config text; raises :class:`ConfigFileError` listing everything wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise ConfigFileError(
            file,
            [
                ConfigError(
                    f"not valid TOML: {exc}",
                    file=file,
                    line=int(match.group(1)) if match else None,
                    hint="see https://toml.io for the syntax",
                )
            ],
        ) from exc
    lines = locate(text)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        found = _problems(exc, file=file, lines=lines, model=Settings, env_keys=_env_keys())
        found += _dangling_routes(data, file=file, lines=lines)
        raise ConfigFileError(file, found) from exc
    problems: list[ConfigError] = []

    def problem(message: str, loc: Loc, hint: str = "") -> None:
        problems.append(
            ConfigError(message, key=dotted(loc), line=line_of(lines, loc), file=file, hint=hint)
        )

    adapters: dict[str, AdapterSetup] = {}
    for name, section in settings.adapters.items():
        raw = _decode_env_json(name, dict(section))
        kind = str(raw.pop("kind", name))
        try:
            cls = load(kind)
        except AdapterError as exc:
            problem(
                exc.message,
                ("adapters", name, "kind") if "kind" in section else ("adapters", name),
                exc.hint,
            )
            continue
        try:
            adapters[name] = AdapterSetup(name, kind, cls, cls.config_model.model_validate(raw))
        except ValidationError as exc:
            problems += _problems(
                exc,
                file=file,
                lines=lines,
                model=cls.config_model,
                prefix=("adapters", name),
                env_keys=_env_keys(),
            )

    if not settings.routes:
        problem(
            "no routes: the gateway would refuse every message",
            ("routes",),
            "add [[routes]] tables",
        )
    seen_patterns: dict[str, int] = {}
    for index, route in enumerate(settings.routes):
        if route.adapter not in settings.adapters:
            known = ", ".join(settings.adapters) or "none"
            problem(
                f"adapter {route.adapter!r} is not configured",
                ("routes", index, "adapter"),
                f"configured adapters: {known}",
            )
        patterns = [route.match] if isinstance(route.match, str) else route.match
        for pattern in patterns:
            try:
                lowered = check_pattern(pattern)
            except ConfigError as exc:
                problem(exc.message, ("routes", index, "match"), exc.hint)
                continue
            if lowered in seen_patterns:
                problem(
                    f"pattern {pattern!r} is already routed by routes[{seen_patterns[lowered]}]",
                    ("routes", index, "match"),
                    "each domain pattern may appear once",
                )
            seen_patterns[lowered] = index
        if route.domain is not None:
            try:
                check_pattern(route.domain)
            except ConfigError as exc:
                problem(exc.message, ("routes", index, "domain"), "a plain domain name")
    for peer, patterns in settings.security.peers.items():
        if peer not in settings.adapters:
            problem(f"adapter {peer!r} is not configured", ("security", "peers", peer))
        for pattern in patterns:
            try:
                check_pattern(pattern)
            except ConfigError as exc:
                problem(exc.message, ("security", "peers", peer), exc.hint)
    for key in ("allow", "deny"):
        try:
            parse_patterns(getattr(settings.security, key), key=f"security.{key}")
        except ConfigError as exc:
            problem(
                exc.message, ("security", key), "user@example.com, *@example.com or *.example.com"
            )
    for address in settings.logging.trace:
        try:
            split_address(address)
        except ValueError as exc:
            problem(str(exc), ("logging", "trace"))
    trust: list[x509.Certificate] = []
    root = base or Path(file).parent
    for path in settings.security.trust:
        full = path if path.is_absolute() else root / path
        try:
            trust += x509.load_pem_x509_certificates(full.read_bytes())
        except (OSError, ValueError) as exc:
            problem(
                f"cannot read trust anchors from {full}: {exc}",
                ("security", "trust"),
                "a PEM file with one or more CA certificates",
            )
    if problems:
        raise ConfigFileError(file, problems)
    return Config(
        file=root / Path(file).name, settings=settings, adapters=adapters, trust=tuple(trust)
    )


def load_file(path: str | Path) -> Config:
    """Read and check a config file (ConfigFileError when something is wrong)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the config file: {exc.strerror}", file=str(file), hint="check the path"
        ) from exc
    return parse(text, file=str(file), base=file.resolve().parent)


def masked(data: Any) -> Any:
    """A copy of ``data`` with the values of secret-looking keys replaced by ``***``."""
    if isinstance(data, dict):
        return {
            k: "***"
            if any(w in str(k).lower() for w in ("secret", "password", "token"))
            else masked(v)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [masked(v) for v in data]
    return data
