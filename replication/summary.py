"""The access summary a node sends to a dataset's custodian.

One signed message per custodian and round, for every dataset of that
custodian the node holds or has read within the window::

    seal(SUMMARY_TAG, [VERSION, reporter id, time, free bytes, load, entries])
    entry = [dataset, version held (0: none), leaving, {site: [bucket, reads, ...]}]

Signed with the reporter's node key, so a custodian counts only what a
member of the grid said, and only under that member's own id: a summary
whose signer is not the peer that sent it, or that fails any bound below, is
refused whole (:class:`overlay.BadMessage`), dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from overlay import (
    BadMessage,
    KeyPair,
    expect,
    open_envelope_untrusted,
    packb,
    seal,
    verify_body,
)

from .trends import MAX_SITES, Counts

__all__ = ["MAX_ENTRIES", "MAX_SUMMARY", "SUMMARY_TAG", "Summary", "SummaryEntry",
           "open_summary_untrusted", "seal_summaries", "seal_summary"]

SUMMARY_TAG = b"gridnode/access-summary/v1"
VERSION = 1
# Datasets one summary may name; a node with more sends several.
MAX_ENTRIES = 256
# Bytes of one summary (the channel's frame cap is 1 MiB).
MAX_SUMMARY = 512 * 1024
MAX_BUCKETS = 1000
MAX_NAME = 300
MAX_READS = 2**40


@dataclass(frozen=True)
class SummaryEntry:
    dataset: str
    version: int  # the version held there, 0 if none
    leaving: bool
    counts: Counts


@dataclass(frozen=True)
class Summary:
    reporter: bytes
    t: float
    free_bytes: int
    load: float
    entries: tuple[SummaryEntry, ...]


def seal_summary(key: KeyPair, t: float, free_bytes: int, load: float,
                 entries: list[SummaryEntry]) -> bytes:
    if len(entries) > MAX_ENTRIES:
        raise ValueError(f"at most {MAX_ENTRIES} datasets per summary")
    wire = [_entry_wire(e) for e in entries]
    return seal(SUMMARY_TAG, [VERSION, key.id, float(t), int(max(0, free_bytes)),
                              float(min(1.0, max(0.0, load))), wire], key.signing_key)


def _entry_wire(e: SummaryEntry) -> list[Any]:
    return [e.dataset, e.version, e.leaving,
            {site: [x for b, n in sorted(buckets.items()) for x in (b, n)]
             for site, buckets in e.counts.items()}]


def seal_summaries(key: KeyPair, t: float, free_bytes: int, load: float,
                   entries: list[SummaryEntry]) -> list[bytes]:
    """As many summaries as ``entries`` need, each within the caps."""
    out: list[bytes] = []
    batch: list[SummaryEntry] = []
    size = 0
    for e in entries:
        n = len(packb(_entry_wire(e)))
        if batch and (len(batch) == MAX_ENTRIES or size + n > MAX_SUMMARY - 1024):
            out.append(seal_summary(key, t, free_bytes, load, batch))
            batch, size = [], 0
        batch.append(e)
        size += n
    if batch:
        out.append(seal_summary(key, t, free_bytes, load, batch))
    return out


def _count(x: Any, what: str, top: int) -> int:
    if type(x) is not int or not 0 <= x <= top:
        raise BadMessage(f"{what} must be an integer 0-{top}")
    return x


def open_summary_untrusted(data: Any, signer: bytes, public_key: bytes) -> Summary:
    """Decode a summary sent by ``signer`` (whose key is ``public_key``) or raise
    BadMessage saying what is wrong."""
    if not isinstance(data, bytes):
        raise BadMessage("a summary is bytes")
    fields, body, sig = open_envelope_untrusted(SUMMARY_TAG, data, max_size=MAX_SUMMARY)
    expect(isinstance(fields, list) and len(fields) == 6, "a summary has 6 fields")
    version, reporter, t, free, load, wire = fields
    expect(version == VERSION and type(version) is int, f"unsupported version {version!r}")
    expect(reporter == signer, "the summary names another node as its reporter")
    verify_body(public_key, body, sig)
    expect(type(t) is float and t >= 0, "time must be a float")
    free_bytes = _count(free, "free bytes", 2**62)
    expect(type(load) is float and 0 <= load <= 1, "load must be 0-1")
    expect(isinstance(wire, list) and len(wire) <= MAX_ENTRIES,
           f"entries must be a list of at most {MAX_ENTRIES}")
    entries = []
    for e in wire:
        expect(isinstance(e, list) and len(e) == 4, "an entry is [dataset, version, "
               "leaving, counts]")
        name, held, leaving, counts = e
        expect(isinstance(name, str) and 0 < len(name) <= MAX_NAME, "bad dataset name")
        _count(held, "version", 2**62)
        expect(type(leaving) is bool, "leaving must be a bool")
        expect(isinstance(counts, dict) and len(counts) <= MAX_SITES,
               f"counts must be a map of at most {MAX_SITES} sites")
        out: Counts = {}
        for site, buckets in counts.items():
            expect(isinstance(site, str) and 0 < len(site) <= 128, "bad site name")
            expect(isinstance(buckets, list) and len(buckets) <= 2 * MAX_BUCKETS
                   and len(buckets) % 2 == 0,
                   f"a site's counts are [bucket, reads, ...], at most {MAX_BUCKETS} buckets")
            out[site] = {_count(b, "bucket", 2**40): _count(n, "reads", MAX_READS)
                         for b, n in zip(buckets[::2], buckets[1::2], strict=True)}
        entries.append(SummaryEntry(name, held, leaving, out))
    return Summary(reporter, t, free_bytes, load, tuple(entries))
