"""Named simulation scenarios from a TOML file (``deploy/scenarios.toml``).

A scenario is a whole contact-center day in a few lines: the voice model of
:mod:`ccpulse.commands.simulate` (intraday arrival profile, staffing schedules or an
Erlang C staffing plan, outages, handle-time distribution, transfers, repeat
callers, surveys) plus optional chat and ticket models of
:mod:`ccpulse.commands.simulate_channels`. Seed and start come from the caller, so one
scenario replays exactly (a fixed seed and start) or runs live (now).

File layout::

    [profiles]                       # named intraday curves: 24 multipliers of the rate
    retail_bank = [0.10, 0.06, ...]  # (UTC hour 0-23 of the event time)

    [scenarios.normal]
    description = "..."
    extends = "other"                # optional: start from another scenario, deep-merged
    [scenarios.normal.voice]         # SimulationConfig fields (not seed/start); omit or
    rate = 0.5                       # `voice = false` for no calls
    profile = "retail_bank"          # a [profiles] name or 24 numbers
    patience_mean = 120              # 0: callers never hang up
    agent_events = true              # optional, off by default: the agent side of
    max_wait = 300                   # simulate.SimulationConfig (also hold_probability,
                                     # callback_probability, break_interval, break_duration)
    [scenarios.normal.voice.staffing]  # optional: Erlang C plan for queues without agents/schedule
    service_level = 0.8              # share answered within `answer_within` seconds
    answer_within = 20
    scale = 1.0                      # planned agents x scale (0.8: a fifth of them missing)
    forecast_rate = 0.5              # the rate the plan assumed (default: the voice rate)
    min_agents = 2
    [[scenarios.normal.voice.queues]]
    name = "billing"                 # and weight, agents or schedule (24 agent counts)
    [[scenarios.normal.voice.outages]]
    start_minutes = 120              # after the simulation start
    duration_minutes = 30
    factor = 0.2                     # share of the scheduled agents still taking calls
    [scenarios.normal.chat]          # ChatConfig fields (queues: name, agents, weight)
    [scenarios.normal.ticket]        # TicketConfig fields

A table in a scenario that ``extends`` another is merged key by key into the
parent's; any other value (arrays included) replaces the parent's.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from ccpulse.commands import simulate
from ccpulse.commands.simulate import DEFAULT_START, HOURS, Outage, QueueModel, SimulationConfig
from ccpulse.commands.simulate_channels import ChatConfig, TicketConfig
# The planner and the live agents_required are one Erlang C (the names stay importable from here).
from ccpulse.core.staffing import agents_for_load as agents_for_service_level
from ccpulse.core.staffing import erlang_c

__all__ = [
    "DEFAULT_SCENARIOS_FILE",
    "Scenario",
    "add_scenario_argument",
    "agents_for_service_level",
    "configs_from_args",
    "erlang_c",
    "load_scenario",
    "load_scenarios",
    "staffing_plan",
]

# The project's copy (a source checkout or an editable install); an installed package
# (e.g. the Docker image) has none, so there it is deploy/scenarios.toml of the
# working directory.
_SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "scenarios.toml"
DEFAULT_SCENARIOS_FILE = _SHIPPED if _SHIPPED.is_file() else Path("deploy", "scenarios.toml")

_VOICE_KEYS = {
    "rate", "queues", "service_mean", "wrapup_mean", "patience_mean", "profile", "service_distribution",
    "service_cv", "transfer_probability", "repeat_probability", "rating_probability", "outages", "staffing",
    *simulate.AGENT_SIDE_OPTIONS, "break_interval", "break_duration",
}
_QUEUE_KEYS = {"name", "agents", "weight", "schedule"}
_CHANNEL_QUEUE_KEYS = {"name", "agents", "weight"}
_STAFFING_KEYS = {"service_level", "answer_within", "scale", "forecast_rate", "min_agents"}
_OUTAGE_KEYS = {"start_minutes", "duration_minutes", "factor", "queues"}
_SCENARIO_KEYS = {"description", "extends", "voice", "chat", "ticket"}


@dataclass(frozen=True, eq=False)
class Scenario:
    """One named scenario: builds its configs for a seed and a start."""

    name: str
    description: str
    # Keyword arguments of the configs, without seed and start; None: the channel is off.
    voice: Mapping[str, Any] | None
    chat: Mapping[str, Any] | None
    ticket: Mapping[str, Any] | None

    def voice_config(self, seed: int = 1, start: datetime = DEFAULT_START) -> SimulationConfig | None:
        return None if self.voice is None else SimulationConfig(**self.voice, seed=seed, start=start)

    def chat_config(self, seed: int = 1, start: datetime = DEFAULT_START) -> ChatConfig | None:
        return None if self.chat is None else ChatConfig(**self.chat, seed=seed, start=start)

    def ticket_config(self, seed: int = 1, start: datetime = DEFAULT_START) -> TicketConfig | None:
        return None if self.ticket is None else TicketConfig(**self.ticket, seed=seed, start=start)

    def configs(self, seed: int = 1, start: datetime = DEFAULT_START
                ) -> tuple[SimulationConfig | None, ChatConfig | None, TicketConfig | None]:
        """(voice, chat, ticket) configs; the arguments of ``generate_mixed_events``."""
        return self.voice_config(seed, start), self.chat_config(seed, start), self.ticket_config(seed, start)


# ---------------------------------------------------------------- Erlang C staffing

def staffing_plan(rate: float, profile: tuple[float, ...] | None, queues: tuple[tuple[float, bool], ...], *,
                  service_mean: float, wrapup_mean: float, transfer_probability: float = 0.0,
                  service_level: float = 0.8, within: float = 20.0, scale: float = 1.0,
                  min_agents: int = 0) -> list[tuple[int, ...]]:
    """Hourly agents per queue, as workforce management plans them: the Erlang C minimum
    for the service level at each hour's forecast load, times ``scale``, at least
    ``min_agents``. ``queues`` is (weight, planned) per queue; unplanned queues still
    count for transfers. Transfers add the transferring agent's talk to the source
    queue and a whole call to the target queues."""
    weights = [w for w, _ in queues]
    total = sum(weights)
    nq = len(queues)
    aht = service_mean + wrapup_mean
    p = transfer_probability
    share = simulate._TRANSFER_TALK_SHARE
    plans = []
    for qi, (weight, planned) in enumerate(queues):
        if not planned:
            plans.append(())
            continue
        # Work per second of arrivals at multiplier 1: own calls, plus calls transferred in.
        own = weight / total
        incoming = p * own if nq == 1 else p * sum(w / total for j, w in enumerate(weights) if j != qi) / (nq - 1)
        work = own * ((1 - p) * aht + p * share * service_mean) + incoming * aht
        calls = own + incoming
        hours = []
        for h in range(HOURS):
            m = 1.0 if profile is None else profile[h]
            load = rate * m * work
            needed = agents_for_service_level(load, load / (rate * m * calls), service_level, within) if load else 0
            hours.append(max(min_agents, int(needed * scale + 0.5)))
        plans.append(tuple(hours))
    return plans


# ---------------------------------------------------------------- the file

def load_scenario(name: str, path: str | Path | None = None) -> Scenario:
    """One scenario by name; ValueError naming the scenarios there are if it is not in the file."""
    scenarios = load_scenarios(DEFAULT_SCENARIOS_FILE if path is None else path)
    try:
        return scenarios[name]
    except KeyError:
        raise ValueError(f"--scenario: no scenario {name!r} in {path or DEFAULT_SCENARIOS_FILE} "
                         f"(there are: {', '.join(sorted(scenarios))})") from None


def load_scenarios(path: str | Path) -> dict[str, Scenario]:
    """Every scenario of the file, validated (each builds its configs once);
    ValueError naming the file and the key of the first problem."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the scenarios file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    try:
        return _parse(doc)
    except _Bad as bad:
        raise ValueError(f"{path}: {bad.key}: {bad.message}") from None


class _Bad(Exception):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def _parse(doc: dict[str, Any]) -> dict[str, Scenario]:
    _keys(doc, {"profiles", "scenarios"}, "")
    profiles = _table(doc.get("profiles", {}), "profiles")
    for name, values in profiles.items():
        _profile(values, f"profiles.{name}")
    if "scenarios" not in doc:
        raise _Bad("scenarios", "missing: the file has no [scenarios.NAME] table")
    raw = _table(doc["scenarios"], "scenarios")
    if not raw:
        raise _Bad("scenarios", "no scenarios defined")
    out: dict[str, Scenario] = {}
    for name in raw:
        merged = _resolve(raw, name, [])
        out[name] = _scenario(name, merged, profiles)
    return out


def _resolve(raw: dict[str, Any], name: str, chain: list[str]) -> dict[str, Any]:
    key = f"scenarios.{name}"
    if name in chain:
        raise _Bad(f"{key}.extends", f"circular: {' -> '.join(chain + [name])}")
    body = _table(raw[name], key)
    parent = body.get("extends")
    if parent is None:
        return body
    if not isinstance(parent, str) or parent not in raw:
        raise _Bad(f"{key}.extends", f"no scenario {parent!r} to extend")
    merged = _merge(_resolve(raw, parent, chain + [name]), body)
    merged.pop("extends", None)
    return merged


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _scenario(name: str, body: dict[str, Any], profiles: dict[str, Any]) -> Scenario:
    key = f"scenarios.{name}"
    _keys(body, _SCENARIO_KEYS, key)
    description = body.get("description", "")
    if not isinstance(description, str):
        raise _Bad(f"{key}.description", "must be a string")
    voice = _voice(body["voice"], f"{key}.voice", profiles) if _on(body, "voice", key) else None
    chat = _channel(body["chat"], f"{key}.chat", ChatConfig) if _on(body, "chat", key) else None
    ticket = _channel(body["ticket"], f"{key}.ticket", TicketConfig) if _on(body, "ticket", key) else None
    if voice is None and chat is None and ticket is None:
        raise _Bad(key, "needs at least one of voice, chat and ticket")
    scenario = Scenario(name, description, voice, chat, ticket)
    for channel, build, kw in (("voice", scenario.voice_config, voice), ("chat", scenario.chat_config, chat),
                               ("ticket", scenario.ticket_config, ticket)):
        try:
            build()
        except (ValueError, TypeError) as exc:
            # The configs' messages start with the field's name: put it on the key path.
            field, sep, message = str(exc).partition(": ")
            if sep and kw is not None and field in kw:
                raise _Bad(f"{key}.{channel}.{field}", message) from None
            raise _Bad(f"{key}.{channel}", str(exc)) from None
    return scenario


def _on(body: dict[str, Any], channel: str, key: str) -> bool:
    value = body.get(channel, False)
    if value is False:
        return False
    if not isinstance(value, dict):
        raise _Bad(f"{key}.{channel}", "must be a table, or false for none")
    return True


def _voice(body: dict[str, Any], key: str, profiles: dict[str, Any]) -> dict[str, Any]:
    _keys(body, _VOICE_KEYS, key)
    kw: dict[str, Any] = {}
    for field in ("rate", "service_mean", "wrapup_mean", "service_cv", "transfer_probability",
                  "repeat_probability", "rating_probability", "break_interval", "break_duration",
                  "hold_probability", "max_wait", "callback_probability"):
        if field in body:
            kw[field] = _number(body[field], f"{key}.{field}")
    if "agent_events" in body:
        kw["agent_events"] = _flag(body["agent_events"], f"{key}.agent_events")
    if "patience_mean" in body:
        patience = _number(body["patience_mean"], f"{key}.patience_mean")
        kw["patience_mean"] = patience or None  # 0: never hang up, as on the command line
    if "service_distribution" in body:
        kw["service_distribution"] = _string(body["service_distribution"], f"{key}.service_distribution")
    profile = body.get("profile")
    if isinstance(profile, str):
        if profile not in profiles:
            raise _Bad(f"{key}.profile", f"no profile {profile!r} in [profiles]")
        profile = profiles[profile]
    if profile is not None:
        kw["profile"] = _profile(profile, f"{key}.profile")
    defaults = SimulationConfig()
    outages = []
    for i, item in enumerate(_array(body.get("outages", []), f"{key}.outages")):
        okey = f"{key}.outages[{i}]"
        item = _table(item, okey)
        _keys(item, _OUTAGE_KEYS, okey)
        for required in ("start_minutes", "duration_minutes"):
            if required not in item:
                raise _Bad(f"{okey}.{required}", "is required")
        queues = tuple(_string(q, f"{okey}.queues") for q in _array(item.get("queues", []), f"{okey}.queues"))
        begin = _number(item["start_minutes"], f"{okey}.start_minutes")
        length = _number(item["duration_minutes"], f"{okey}.duration_minutes")
        factor = _number(item.get("factor", 0.2), f"{okey}.factor")
        if begin < 0:
            raise _Bad(f"{okey}.start_minutes", "must be zero or positive (minutes after the start)")
        if length <= 0:
            raise _Bad(f"{okey}.duration_minutes", "must be a positive number of minutes")
        if factor < 0:
            raise _Bad(f"{okey}.factor", "must be zero or positive (the share of agents still working)")
        queue_names = {q.get("name") for q in _array(body["queues"], f"{key}.queues") if isinstance(q, dict)} \
            if "queues" in body else {q.name for q in defaults.queues}
        for name in queues:
            if name not in queue_names:
                raise _Bad(f"{okey}.queues", f"no queue {name!r} in this scenario")
        outages.append(Outage(begin * 60, length * 60, factor, queues))
    if outages:
        kw["outages"] = tuple(outages)
    if "queues" not in body:
        if "staffing" in body:
            raise _Bad(f"{key}.staffing", "needs [[...voice.queues]] to plan")
        return kw
    staffing = body.get("staffing")
    if staffing is not None:
        staffing = _table(staffing, f"{key}.staffing")
        _keys(staffing, _STAFFING_KEYS, f"{key}.staffing")
    items = []
    for i, item in enumerate(_array(body["queues"], f"{key}.queues")):
        qkey = f"{key}.queues[{i}]"
        item = _table(item, qkey)
        _keys(item, _QUEUE_KEYS, qkey)
        planned = "agents" not in item and "schedule" not in item
        if planned and staffing is None:
            raise _Bad(qkey, "needs agents or schedule (or a voice.staffing plan)")
        items.append((qkey, item, planned))
    if not items:
        raise _Bad(f"{key}.queues", "at least one queue is needed")
    plans: list[tuple[int, ...]] = [()] * len(items)
    if staffing is not None:
        skey = f"{key}.staffing"
        sl = _number(staffing.get("service_level", 0.8), f"{skey}.service_level")
        if not 0 < sl < 1:
            raise _Bad(f"{skey}.service_level", "must be between 0 and 1 (exclusive)")
        within = _number(staffing.get("answer_within", 20), f"{skey}.answer_within")
        scale = _number(staffing.get("scale", 1.0), f"{skey}.scale")
        forecast = _number(staffing.get("forecast_rate", kw.get("rate", defaults.rate)), f"{skey}.forecast_rate")
        min_agents = staffing.get("min_agents", 0)
        if not simulate._is_int(min_agents) or min_agents < 0:
            raise _Bad(f"{skey}.min_agents", "must be an integer >= 0")
        for name, value in (("answer_within", within), ("scale", scale), ("forecast_rate", forecast)):
            if not (value > 0 and math.isfinite(value)):
                raise _Bad(f"{skey}.{name}", "must be a positive number")
        weights = tuple((_number(item.get("weight", 1.0), f"{qkey}.weight"), planned)
                        for qkey, item, planned in items)
        if not all(w > 0 and math.isfinite(w) for w, _ in weights):
            raise _Bad(f"{key}.queues", "weights must be positive numbers")
        plans = staffing_plan(
            forecast, kw.get("profile"), weights,
            service_mean=kw.get("service_mean", defaults.service_mean),
            wrapup_mean=kw.get("wrapup_mean", defaults.wrapup_mean),
            transfer_probability=kw.get("transfer_probability", 0.0),
            service_level=sl, within=within, scale=scale, min_agents=min_agents)
    queues = []
    for (qkey, item, planned), plan in zip(items, plans):
        qkw: dict[str, Any] = {"name": _string(item.get("name"), f"{qkey}.name")}
        if "weight" in item:
            qkw["weight"] = _number(item["weight"], f"{qkey}.weight")
        if "agents" in item:
            qkw["agents"] = _agents(item["agents"], f"{qkey}.agents")
        if planned:
            qkw["schedule"] = plan
        elif "schedule" in item:
            schedule = _array(item["schedule"], f"{qkey}.schedule")
            if len(schedule) != HOURS or not all(simulate._is_int(n) and n >= 0 for n in schedule):
                raise _Bad(f"{qkey}.schedule", "must be 24 agent counts (integers >= 0), one per hour of the day")
            qkw["schedule"] = tuple(schedule)
        try:
            queues.append(QueueModel(**qkw))
        except (ValueError, TypeError) as exc:
            raise _Bad(qkey, str(exc)) from None
    kw["queues"] = tuple(queues)
    return kw


def _channel(body: dict[str, Any], key: str, cls: type) -> dict[str, Any]:
    allowed = {f.name for f in dataclasses.fields(cls)} - {"seed", "start"}
    _keys(body, allowed, key)
    kw: dict[str, Any] = {}
    for name, value in body.items():
        if name == "queues":
            queues = []
            for i, item in enumerate(_array(value, f"{key}.queues")):
                qkey = f"{key}.queues[{i}]"
                item = _table(item, qkey)
                _keys(item, _CHANNEL_QUEUE_KEYS, qkey)
                if "agents" in item:
                    _agents(item["agents"], f"{qkey}.agents")
                try:
                    queues.append(QueueModel(**item))
                except (ValueError, TypeError) as exc:
                    raise _Bad(qkey, str(exc)) from None
            kw[name] = tuple(queues)
        elif name == "channels":
            kw[name] = tuple(_string(c, f"{key}.channels") for c in _array(value, f"{key}.channels"))
        elif name == "patience_mean":
            kw[name] = _number(value, f"{key}.{name}") or None
        elif name == "agent_events":
            kw[name] = _flag(value, f"{key}.{name}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Bad(f"{key}.{name}", "must be a number")
        else:
            kw[name] = value
    return kw


# ---------------------------------------------------------------- small checks

def _keys(table: dict[str, Any], allowed: set[str], key: str) -> None:
    for k in table:
        if k not in allowed:
            where = f"{key}.{k}" if key else k
            raise _Bad(where, f"unknown key (expected one of {', '.join(sorted(allowed))})")


def _table(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(key, "must be a table")
    return value


def _array(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Bad(key, "must be an array")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Bad(key, "must be a number")
    return value


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise _Bad(key, "must be true or false")
    return value


def _agents(value: Any, key: str) -> int:
    if not simulate._is_int(value) or value < 1:
        raise _Bad(key, "must be an integer of at least 1")
    return value


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad(key, "must be a non-empty string")
    return value


def _profile(value: Any, key: str) -> tuple[float, ...]:
    values = _array(value, key)
    if len(values) != HOURS:
        raise _Bad(key, f"must have 24 hourly multipliers, got {len(values)}")
    for v in values:
        if _number(v, key) < 0:
            raise _Bad(key, "multipliers must be >= 0")
    if not any(values):
        raise _Bad(key, "at least one hour must have arrivals")
    return tuple(float(v) for v in values)


# ---------------------------------------------------------------- command line

def add_scenario_argument(parser: argparse.ArgumentParser) -> None:
    """``--scenario NAME`` and ``--scenarios-file PATH``."""
    parser.add_argument("--scenario", default=None, metavar="NAME",
                        help="simulate a named scenario of --scenarios-file (e.g. normal, understaffed, "
                             "outage, peak); it replaces the model options (--rate, --queues, --agents, "
                             "--patience, --service-mean, --wrapup-mean and the chat/ticket rates), while "
                             "--seed, --start, --duration and --speed still apply")
    parser.add_argument("--scenarios-file", type=Path, default=DEFAULT_SCENARIOS_FILE, metavar="PATH",
                        help="the scenarios TOML file (default: deploy/scenarios.toml of the project)")


def configs_from_args(ns: argparse.Namespace, *, seed: int | None = None, start: datetime | None = None
                      ) -> tuple[SimulationConfig | None, ChatConfig | None, TicketConfig | None]:
    """(voice, chat, ticket) configs of ``--scenario``; (None, None, None) without one.

    Seed and start follow ``simulate.config_from_args`` (live runs start now with a
    fresh seed) when ``ns`` has the simulate options; otherwise, unless given, the
    run is live. ValueError for an unknown scenario or a bad file.
    """
    name = getattr(ns, "scenario", None)
    if name is None:
        return None, None, None
    scenario = load_scenario(name, getattr(ns, "scenarios_file", None) or DEFAULT_SCENARIOS_FILE)
    if seed is None or start is None:
        if all(hasattr(ns, a) for a in ("duration", "speed", "start", "seed")):
            base, _, _ = simulate.config_from_args(ns)
            seed = base.seed if seed is None else seed
            start = base.start if start is None else start
        else:
            start = simulate.live_start() if start is None else start
            seed = int(start.timestamp()) if seed is None else seed
    voice, chat, ticket = scenario.configs(seed, start)
    # --agent-events, --hold-rate, --max-wait, --callback-share apply to a scenario too.
    options = {k: v for k, v in simulate.agent_side_options(ns).items() if v}
    if voice is not None and options:
        voice = dataclasses.replace(voice, **options)
    if chat is not None and options.get("agent_events"):
        chat = dataclasses.replace(chat, agent_events=True)
    return voice, chat, ticket
