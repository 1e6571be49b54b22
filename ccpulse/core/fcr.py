"""First-contact resolution (METRICS.md): pure state of one customer-keyed partition.

A contact (an interaction's first queue entry, with a customer id) is resolved on
first contact when the same customer has no new interaction within
``fcr_horizon``. The answer is known only a horizon later, so FCR is a *delayed*
window: its counts belong to the window of the contact, and that window's FCR
part becomes final once event time passes ``end + horizon + lateness``.

A contact is decided at ``ts + horizon + lateness`` (not earlier) so that a
follow-up contact delivered out of order within the allowed lateness still
makes it a repeat, exactly as in-order delivery would. State is the contacts per
customer; the FCR windows are derived from it.

Event time here is the lifecycle stage's: each lifecycle partition reports its
watermark after the contacts it sent, and FCR's watermark is their minimum once
every lifecycle partition has reported, so a lagging lifecycle partition never
has its contacts decided early.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ccpulse.core.windowing import Windowing

# (size_s, window_start_ms, "q", queue, channel) as in kpis.WindowKey
FcrKey = tuple[int, int, str, str, str]


@dataclass(frozen=True, slots=True)
class Contact:
    ts: int
    interaction_id: str
    queue: str
    channel: str

    def to_list(self) -> list[Any]:
        return [self.ts, self.interaction_id, self.queue, self.channel]


@dataclass(slots=True)
class FcrRecord:
    watermark: int = 0
    final_through: int = 0
    last_offset: int = -1
    # "queue|channel" -> [contacts, decided, resolved] of final windows of the smallest size
    totals: dict[str, list[int]] = field(default_factory=dict)
    # upstream (lifecycle) partition -> its watermark
    sources: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "FcrRecord":
        return cls(**{k: doc[k] for k in cls.__slots__ if k in doc})


@dataclass(frozen=True, slots=True)
class FcrSnapshot:
    key: FcrKey
    contacts: int
    decided: int
    resolved: int
    final: bool
    version: int


@dataclass(slots=True)
class FcrEngine:
    windowing: Windowing
    horizon_ms: int
    lateness_ms: int
    record: FcrRecord = field(default_factory=FcrRecord)
    # window -> [contacts, decided, resolved]; derived from the customers' contacts
    windows: dict[FcrKey, list[int]] = field(default_factory=dict)
    dirty: set[FcrKey] = field(default_factory=set)
    # (decision time, customer) of contacts not decided yet: advance() visits only these
    pending: list[tuple[int, str]] = field(default_factory=list)

    def decided_at(self, contact: Contact) -> int:
        return contact.ts + self.horizon_ms + self.lateness_ms

    def closes_at(self, key: FcrKey) -> int:
        return self.windowing.end(key[0], key[1]) + self.horizon_ms + self.lateness_ms

    def resolved(self, contact: Contact, contacts: list[Contact]) -> bool:
        """No other contact of the customer within the horizon after this one."""
        return not any(other.interaction_id != contact.interaction_id
                       and contact.ts < other.ts <= contact.ts + self.horizon_ms
                       for other in contacts)

    def keys(self, contact: Contact) -> list[FcrKey]:
        return [(size, start, "q", contact.queue, contact.channel)
                for size, start in self.windowing.starts(contact.ts)]

    def add(self, customer: str, contacts: list[Contact], contact: Contact, offset: int) -> bool:
        """Add a customer's contact (idempotent by interaction id); False if known or late."""
        self.record.last_offset = max(self.record.last_offset, offset)
        if any(c.interaction_id == contact.interaction_id for c in contacts):
            return False
        keys = self.keys(contact)
        if all(self.closes_at(k) <= self.record.final_through for k in keys):
            return False
        contacts.append(contact)
        contacts.sort(key=lambda c: (c.ts, c.interaction_id))
        # Earlier contacts decided before this one arrived keep their decision:
        # decisions wait out the lateness, so this follow-up is later than allowed.
        decided = self.record.watermark >= self.decided_at(contact)
        resolved = 1 if decided and self.resolved(contact, contacts) else 0
        for key in keys:
            if self.closes_at(key) > self.record.final_through:
                self._bump(key, contacts=1, decided=1 if decided else 0, resolved=resolved)
        if not decided:
            heapq.heappush(self.pending, (self.decided_at(contact), customer))
        return True

    def observe(self, sources: dict[str, int], expected: int,
                lookup: Callable[[str], list[Contact] | None]) -> None:
        """Upstream watermarks; event time moves to their minimum once all ``expected`` reported."""
        known = self.record.sources
        for source, ts in sources.items():
            if ts is not None and ts > known.get(source, -1):
                known[source] = ts
        if len(known) >= expected:
            self.advance(min(known.values()), lookup)

    def advance(self, watermark: int, lookup: Callable[[str], list[Contact] | None]) -> None:
        """Move event time; contacts whose horizon (plus lateness) has passed get decided."""
        previous = self.record.watermark
        if watermark <= previous:
            return
        self.record.watermark = watermark
        due: set[str] = set()
        while self.pending and self.pending[0][0] <= watermark:
            due.add(heapq.heappop(self.pending)[1])
        for customer in sorted(due):
            contacts = lookup(customer) or []
            for c in contacts:
                if previous < self.decided_at(c) <= watermark:
                    resolved = 1 if self.resolved(c, contacts) else 0
                    for key in self.keys(c):
                        if self.closes_at(key) > self.record.final_through:
                            self._bump(key, decided=1, resolved=resolved)

    def _bump(self, key: FcrKey, contacts: int = 0, decided: int = 0, resolved: int = 0) -> None:
        counts = self.windows.setdefault(key, [0, 0, 0])
        counts[0] += contacts
        counts[1] += decided
        counts[2] += resolved
        self.dirty.add(key)

    def rebuild(self, customers: Iterable[tuple[str, list[Contact]]]) -> None:
        self.windows.clear()
        self.pending = []
        for customer, contacts in customers:
            for c in contacts:
                decided = self.record.watermark >= self.decided_at(c)
                resolved = 1 if decided and self.resolved(c, contacts) else 0
                for key in self.keys(c):
                    if self.closes_at(key) > self.record.final_through:
                        self._bump(key, contacts=1, decided=1 if decided else 0, resolved=resolved)
                if not decided:
                    self.pending.append((self.decided_at(c), customer))
        heapq.heapify(self.pending)
        self.dirty = set(self.windows)

    def close(self) -> list[FcrSnapshot]:
        wm = self.record.watermark
        finals = []
        for key in sorted(k for k in self.windows if self.closes_at(k) <= wm):
            contacts, decided, resolved = self.windows.pop(key)
            self.dirty.discard(key)
            if key[0] == self.windowing.sizes[0]:
                total = self.record.totals.setdefault(f"{key[3]}|{key[4]}", [0, 0, 0])
                for i, value in enumerate((contacts, decided, resolved)):
                    total[i] += value
            finals.append(FcrSnapshot(key, contacts, decided, resolved, True, self.version(True)))
        self.record.final_through = max(self.record.final_through, wm)
        return finals

    def take_dirty(self) -> list[FcrSnapshot]:
        snaps = [FcrSnapshot(k, *self.windows[k], False, self.version(False))
                 for k in sorted(self.dirty) if k in self.windows]
        self.dirty.clear()
        return snaps

    def version(self, final: bool) -> int:
        return (self.record.last_offset + 1) * 2 + (1 if final else 0)

    def expired(self, contacts: list[Contact]) -> list[Contact]:
        """Contacts no window or decision needs any more."""
        keep_after = self.record.final_through
        return [c for c in contacts
                if all(self.closes_at(k) <= keep_after for k in self.keys(c))
                and c.ts + self.horizon_ms + self.lateness_ms <= keep_after]

    def running_totals(self) -> dict[tuple[str, str], list[int]]:
        """Cumulative [contacts, decided, resolved] per queue x channel (final + open windows)."""
        out = {tuple(k.split("|", 1)): list(v) for k, v in self.record.totals.items()}
        for key, counts in self.windows.items():
            if key[0] == self.windowing.sizes[0]:
                total = out.setdefault((key[3], key[4]), [0, 0, 0])
                for i, value in enumerate(counts):
                    total[i] += value
        return out  # type: ignore[return-value]
