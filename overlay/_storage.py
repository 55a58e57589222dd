"""The DHT's record store: validating, bounded, no rollback (a pure core).

At most one record per (key, signer): a higher ``seq`` replaces a lower
one; a lower or equal one is refused, so nobody can roll a record back by
replaying an old copy.  Memory is bounded three ways: records in total,
records per signer (one member cannot fill the store), and signers per key
(one provider set cannot crowd out the rest).  Every outcome is counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from ._errors import BadMessage
from .certs import GridInfo
from .records import SignedRecord

STORED, REPLACED, SAME, STALE, QUOTA, INVALID = (
    "stored", "replaced", "same", "stale", "quota", "invalid")


class RecordStore:
    def __init__(self, grid: GridInfo, *, max_records: int = 65536, max_per_signer: int = 1024,
                 max_signers_per_key: int = 1024) -> None:
        self.grid = grid
        self.max_records = max_records
        self.max_per_signer = max_per_signer
        self.max_signers_per_key = max_signers_per_key
        self._by_key: dict[bytes, dict[bytes, SignedRecord]] = {}
        self._per_signer: Counter[bytes] = Counter()
        self._count = 0
        self.counters: Counter[str] = Counter()

    def __len__(self) -> int:
        return self._count

    def put_untrusted(self, raw: Any, now: float,
                      revoked: frozenset[bytes] = frozenset()) -> str:
        """Validate and store ``raw``; return what happened (one of the outcomes above)."""
        try:
            rec = SignedRecord.from_bytes_untrusted(raw, self.grid, now, revoked=revoked)
        except BadMessage:
            self.counters[INVALID] += 1
            return INVALID
        return self.put(rec)

    def put(self, rec: SignedRecord) -> str:
        """Store a record that has already been validated."""
        signers = self._by_key.get(rec.key) or {}
        old = signers.get(rec.signer)
        if old is not None:
            if rec.seq < old.seq or (rec.seq == old.seq and rec.raw != old.raw):
                outcome = STALE
            elif rec.seq == old.seq:
                outcome = SAME
            else:
                signers[rec.signer] = rec
                outcome = REPLACED
            self.counters[outcome] += 1
            return outcome
        if (self._count >= self.max_records
                or self._per_signer[rec.signer] >= self.max_per_signer
                or len(signers) >= self.max_signers_per_key):
            self.counters[QUOTA] += 1
            return QUOTA
        self._by_key[rec.key] = signers
        signers[rec.signer] = rec
        self._per_signer[rec.signer] += 1
        self._count += 1
        self.counters[STORED] += 1
        return STORED

    def get(self, key: bytes, now: float,
            revoked: frozenset[bytes] = frozenset()) -> list[SignedRecord]:
        """Fresh records under ``key`` whose signers are not revoked."""
        signers = self._by_key.get(key)
        if not signers:
            return []
        return [r for r in signers.values() if r.expires >= now and r.signer not in revoked]

    def purge(self, now: float, revoked: frozenset[bytes] = frozenset()) -> int:
        """Drop expired records and those of revoked signers; return how many."""
        dropped = 0
        for key in list(self._by_key):
            signers = self._by_key[key]
            for signer in [s for s, r in signers.items() if r.expires < now or s in revoked]:
                del signers[signer]
                self._per_signer[signer] -= 1
                if not self._per_signer[signer]:
                    del self._per_signer[signer]
                dropped += 1
            if not signers:
                del self._by_key[key]
        self._count -= dropped
        self.counters["purged"] += dropped
        return dropped

    def keys(self) -> list[bytes]:
        return list(self._by_key)

    def records(self) -> Iterator[SignedRecord]:
        for signers in self._by_key.values():
            yield from signers.values()
