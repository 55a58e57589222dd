"""DHT datagrams (overlay._dgram): encoding, the checker at the door, cookies.

``DatagramChecker.decode_untrusted`` is total: for any bytes it returns a
checked Request, Response or Retry, or raises BadMessage.  Every test drives
it synchronously with an explicit clock (``now_ms``).
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay import BadMessage, Certificate, GridInfo, KeyPair, packb
from overlay._dgram import (
    COOKIE_SIZE,
    DGRAM_TAG,
    MAX_DATAGRAM,
    MAX_METHOD,
    MAX_SKEW_MS,
    MSG_ID_SIZE,
    REQUEST,
    RESPONSE,
    RETRY_TAG,
    AddressBook,
    DatagramChecker,
    Request,
    Response,
    Retry,
    encode_request,
    encode_response,
    encode_response_within,
    encode_retry,
    new_msg_id,
)
from overlay._wire import seal
from overlay.certs import CLOCK_SKEW
from tests.overlay.common import NOW, SETTINGS, fixed_key

AUTH = fixed_key(51)
OTHER_AUTH = fixed_key(52)
MEMBER = fixed_key(53)
MEMBER2 = fixed_key(54)
STRANGER = fixed_key(55)
GRID = GridInfo.create(AUTH, "dgram-grid", NOW)
NOW_MS = NOW * 1000
YEAR = 365 * 86400


def _cert(key: KeyPair, authority: KeyPair = AUTH, *, kind: str = "node",
          not_after: int = NOW + YEAR) -> Certificate:
    return Certificate.issue(authority, kind=kind, subject_key=key.public_key, name="site",
                             roles=("storage",) if kind == "node" else (),
                             not_before=NOW - 3600, not_after=not_after)


CERT = _cert(MEMBER)
CERT2 = _cert(MEMBER2)
MID = bytes(range(MSG_ID_SIZE))
COOKIE = b"c" * COOKIE_SIZE


def request(msg_id: bytes = MID, ts_ms: int = NOW_MS, method: str = "find_node",
            args: list[Any] | None = None, cookie: bytes = b"", key: KeyPair = MEMBER,
            cert: Certificate = CERT) -> bytes:
    return encode_request(key.signing_key, cert, msg_id, ts_ms, method,
                          [b"t" * 20] if args is None else args, cookie)


def checker(**kw: int) -> DatagramChecker:
    return DatagramChecker(GRID, **kw)


def refused(data: bytes, now_ms: int = NOW_MS, chk: DatagramChecker | None = None) -> str:
    """The reason ``data`` is refused; fails the test if it is accepted."""
    with pytest.raises(BadMessage) as info:
        (chk or checker()).decode_untrusted(data, now_ms)
    return str(info.value)


# -- round trips -----------------------------------------------------------------------------


def test_request_round_trip() -> None:
    data = request(args=[b"x" * 20, 3, "s", None], cookie=COOKIE)
    req = checker().decode_untrusted(data, NOW_MS)
    assert isinstance(req, Request)
    assert (req.msg_id, req.ts_ms, req.cookie, req.method, req.args) == (
        MID, NOW_MS, COOKIE, "find_node", [b"x" * 20, 3, "s", None])
    assert req.sender == MEMBER.id == CERT.subject_id
    assert req.cert == CERT
    assert req.size == len(data)


def test_request_without_cookie() -> None:
    req = checker().decode_untrusted(request(), NOW_MS)
    assert isinstance(req, Request) and req.cookie == b""


def test_response_round_trip() -> None:
    result = {"nodes": [[b"i" * 20, "10.0.0.1", 4000]], "n": 2}
    data = encode_response(MEMBER2.signing_key, CERT2, MID, NOW_MS - 5, result)
    resp = checker().decode_untrusted(data, NOW_MS)
    assert isinstance(resp, Response)
    assert (resp.msg_id, resp.ts_ms, resp.result) == (MID, NOW_MS - 5, result)
    assert resp.sender == MEMBER2.id == CERT2.subject_id
    assert resp.size == len(data)


def test_retry_round_trip() -> None:
    data = encode_retry(MID, COOKIE)
    retry = checker().decode_untrusted(data, NOW_MS)
    assert retry == Retry(MID, COOKIE, len(data))
    # A retry is smaller than any request it answers: no amplification.
    assert len(data) < len(request(args=[]))


@pytest.mark.parametrize("msg_id, cookie", [
    (MID[:-1], COOKIE), (MID + b"x", COOKIE), (MID, b""), (MID, COOKIE[:-1]),
    ("x" * MSG_ID_SIZE, COOKIE), (MID, None),
])
def test_malformed_retry_is_refused(msg_id: Any, cookie: Any) -> None:
    refused(packb([RETRY_TAG, msg_id, cookie]))


def test_new_msg_ids_are_random_and_sized() -> None:
    a, b = new_msg_id(), new_msg_id()
    assert len(a) == len(b) == MSG_ID_SIZE and a != b


# -- authentication ------------------------------------------------------------------------


def test_outsider_is_refused() -> None:
    outsider_cert = _cert(STRANGER, OTHER_AUTH)
    data = request(key=STRANGER, cert=outsider_cert)
    assert "grid" in refused(data)
    # ... though its own grid takes it.
    other_grid = GridInfo.create(OTHER_AUTH, "other", NOW)
    assert isinstance(DatagramChecker(other_grid).decode_untrusted(data, NOW_MS), Request)


def test_user_certificate_is_refused() -> None:
    refused(request(cert=_cert(MEMBER, kind="user")))


def test_signature_by_another_key_is_refused() -> None:
    assert "signature" in refused(request(key=MEMBER2, cert=CERT))
    assert "signature" in refused(encode_response(STRANGER.signing_key, CERT, MID, NOW_MS, 1))


def test_revoked_member_is_refused_after_set_revoked() -> None:
    chk = checker()
    assert isinstance(chk.decode_untrusted(request(msg_id=b"a" * 16), NOW_MS), Request)
    chk.set_revoked(frozenset({MEMBER.id}))
    assert "revoked" in refused(request(msg_id=b"b" * 16), chk=chk)
    assert "revoked" in refused(encode_response(MEMBER.signing_key, CERT, MID, NOW_MS, 0),
                                chk=chk)
    # Others are not affected, and an un-revoked member is back.
    assert isinstance(chk.decode_untrusted(request(msg_id=b"c" * 16, key=MEMBER2, cert=CERT2),
                                           NOW_MS), Request)
    chk.set_revoked(frozenset())
    assert isinstance(chk.decode_untrusted(request(msg_id=b"d" * 16), NOW_MS), Request)


def test_expired_certificate_is_refused_even_when_cached() -> None:
    short = _cert(MEMBER, not_after=NOW + 100)
    chk = checker()
    assert isinstance(chk.decode_untrusted(request(msg_id=b"a" * 16, cert=short), NOW_MS),
                      Request)
    later_ms = (NOW + 100 + CLOCK_SKEW + 1) * 1000
    data = request(msg_id=b"b" * 16, cert=short, ts_ms=later_ms)
    assert "expired" in refused(data, later_ms, chk)  # cached, still re-judged
    assert "expired" in refused(data, later_ms)       # fresh checker


def test_certificate_not_yet_valid_is_refused() -> None:
    early_ms = (NOW - 3600 - CLOCK_SKEW - 1) * 1000
    refused(request(ts_ms=early_ms), early_ms)


@pytest.mark.parametrize("offset", [MAX_SKEW_MS + 1, -MAX_SKEW_MS - 1, 10**12, -(10**12)])
def test_stale_datagram_is_refused(offset: int) -> None:
    assert "stale" in refused(request(ts_ms=NOW_MS + offset))
    assert "stale" in refused(encode_response(MEMBER.signing_key, CERT, MID, NOW_MS + offset,
                                              []))


@pytest.mark.parametrize("offset", [MAX_SKEW_MS, -MAX_SKEW_MS, 0])
def test_skew_within_the_window_is_accepted(offset: int) -> None:
    assert isinstance(checker().decode_untrusted(request(ts_ms=NOW_MS + offset), NOW_MS),
                      Request)


def test_timestamp_must_be_an_integer() -> None:
    for ts in (float(NOW_MS), True, str(NOW_MS), None):
        refused(seal(DGRAM_TAG, [REQUEST, MID, ts, CERT.raw, b"", "ping", []],
                     MEMBER.signing_key))


# -- replays ------------------------------------------------------------------------------------


def test_same_request_twice_is_a_replay() -> None:
    chk = checker()
    data = request()
    assert isinstance(chk.decode_untrusted(data, NOW_MS), Request)
    assert "replayed" in refused(data, NOW_MS + 1000, chk)
    # A fresh signature over the same msg_id is the same request too.
    assert "replayed" in refused(request(ts_ms=NOW_MS + 5), NOW_MS + 1000, chk)
    # Same msg_id from another sender is another request.
    other = request(key=MEMBER2, cert=CERT2)
    assert isinstance(chk.decode_untrusted(other, NOW_MS + 1000), Request)


def test_replay_cache_is_bounded() -> None:
    chk = checker(replay_cache_size=8)
    for i in range(30):
        chk.decode_untrusted(request(msg_id=i.to_bytes(MSG_ID_SIZE, "big")), NOW_MS)
        assert len(chk._seen) <= 8
    assert len(chk._seen) == 8
    # The newest are remembered.
    assert "replayed" in refused(request(msg_id=(29).to_bytes(MSG_ID_SIZE, "big")),
                                 chk=chk)


def test_old_replay_entries_expire_and_old_requests_stay_refused() -> None:
    chk = checker()
    first = request(msg_id=b"1" * 16)
    chk.decode_untrusted(first, NOW_MS)
    chk.decode_untrusted(request(msg_id=b"2" * 16, ts_ms=NOW_MS + 2 * MAX_SKEW_MS),
                         NOW_MS + 2 * MAX_SKEW_MS)
    assert len(chk._seen) == 2  # exactly at the edge: kept
    late = NOW_MS + 2 * MAX_SKEW_MS + 1
    chk.decode_untrusted(request(msg_id=b"3" * 16, ts_ms=late), late)
    assert (MEMBER.id, b"1" * 16) not in chk._seen
    assert len(chk._seen) == 2
    # Forgotten, but it could not be replayed anyway: it is stale by now.
    assert "stale" in refused(first, late, chk)


# -- size and cache limits --------------------------------------------------------------------


def _request_of_size(size: int) -> bytes:
    pad = size - len(request(args=[b""]))
    for extra in range(pad - 8, pad + 8):
        data = request(args=[b"x" * extra])
        if len(data) == size:
            return data
    raise AssertionError(f"no request of exactly {size} bytes")


@given(pad_to=st.integers(0, 3000), extra=st.integers(0, 600))
@SETTINGS
def test_padding_is_sized_before_signing(pad_to: int, extra: int) -> None:
    """Padding is sized before signing: the same size as sealing twice, and valid."""
    data = encode_request(MEMBER.signing_key, CERT, MID, NOW_MS, "ping", [b"x" * extra],
                          pad_to=pad_to)
    fields = [REQUEST, MID, NOW_MS, CERT.raw, b"", "ping", [b"x" * extra]]
    natural = len(seal(DGRAM_TAG, fields, MEMBER.signing_key))
    if natural < pad_to:
        padded = [*fields, bytes(max(0, pad_to - natural - 5))]
        assert len(data) == len(seal(DGRAM_TAG, padded, MEMBER.signing_key))
    else:
        assert len(data) == natural
    msg = checker().decode_untrusted(data, NOW_MS)
    assert isinstance(msg, Request) and msg.size == len(data) and msg.args == [b"x" * extra]


def test_response_within_a_size_is_built_only_if_it_fits() -> None:
    full = encode_response(MEMBER2.signing_key, CERT2, MID, NOW_MS, [b"r" * 300], COOKIE)
    fits = encode_response_within(MEMBER2.signing_key, CERT2, MID, NOW_MS, [b"r" * 300],
                                  COOKIE, len(full))
    assert fits is not None and len(fits) == len(full)
    assert isinstance(checker().decode_untrusted(fits, NOW_MS), Response)
    assert encode_response_within(MEMBER2.signing_key, CERT2, MID, NOW_MS, [b"r" * 300],
                                  COOKIE, len(full) - 1) is None


def test_datagram_size_limit() -> None:
    at_limit = _request_of_size(MAX_DATAGRAM)
    assert isinstance(checker().decode_untrusted(at_limit, NOW_MS), Request)
    over = _request_of_size(MAX_DATAGRAM + 1)
    assert "exceeds" in refused(over)
    assert "exceeds" in refused(b"\x00" * (MAX_DATAGRAM + 1))


def test_certificate_cache_is_bounded() -> None:
    chk = checker(cert_cache_size=3)
    keys = [fixed_key(60 + i) for i in range(6)]
    for i, key in enumerate(keys):
        data = request(msg_id=bytes([i]) * 16, key=key, cert=_cert(key))
        assert isinstance(chk.decode_untrusted(data, NOW_MS), Request)
        assert len(chk._certs) <= 3
    assert len(chk._certs) == 3
    # An evicted certificate is simply checked again.
    again = request(msg_id=b"z" * 16, key=keys[0], cert=_cert(keys[0]))
    assert chk.decode_untrusted(again, NOW_MS).sender == keys[0].id
    assert len(chk._certs) == 3


def test_a_refused_certificate_is_not_cached() -> None:
    chk = checker()
    refused(request(key=STRANGER, cert=_cert(STRANGER, OTHER_AUTH)), chk=chk)
    assert len(chk._certs) == 0


# -- tampering and fuzzing ----------------------------------------------------------------------

GOOD = request(args=[b"k" * 20, 7], cookie=COOKIE)


def test_good_request_decodes() -> None:
    """The reference datagram the tamper tests start from is itself valid."""
    assert isinstance(checker().decode_untrusted(GOOD, NOW_MS), Request)


def test_every_single_byte_flip_is_refused() -> None:
    chk = checker()  # shared: only the certificate cache carries over
    for i in range(len(GOOD)):
        for mask in (0x01, 0x80, 0xFF):
            data = bytearray(GOOD)
            data[i] ^= mask
            with pytest.raises(BadMessage):
                chk.decode_untrusted(bytes(data), NOW_MS)
    assert len(chk._seen) == 0


@SETTINGS
@given(st.data())
def test_random_byte_flip_is_refused(data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(GOOD) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = bytearray(GOOD)
    tampered[i] ^= mask
    with pytest.raises(BadMessage):
        checker().decode_untrusted(bytes(tampered), NOW_MS)


def test_truncations_and_extensions_are_refused() -> None:
    for n in range(len(GOOD)):
        refused(GOOD[:n])
    refused(GOOD + b"\x00")
    refused(b"\x00" + GOOD)


@SETTINGS
@given(st.binary(max_size=MAX_DATAGRAM + 10))
def test_arbitrary_bytes_are_decoded_or_refused(data: bytes) -> None:
    try:
        out = checker().decode_untrusted(data, NOW_MS)
    except BadMessage:
        return
    # Only an unsigned retry can be made without a member's key.
    assert isinstance(out, Retry)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=20,
)


@SETTINGS
@given(st.lists(msgpack_values, max_size=8), st.sampled_from([DGRAM_TAG, RETRY_TAG, b"x"]),
       st.booleans())
def test_structured_garbage_is_decoded_or_refused(fields: list, tag: bytes,
                                                  enveloped: bool) -> None:
    """Well-formed msgpack of the right overall shape, unsigned or badly signed."""
    if enveloped:
        data = packb([packb([tag, *fields]), b"s" * 64])
    else:
        data = packb([tag, *fields])
    try:
        out = checker().decode_untrusted(data, NOW_MS)
    except BadMessage:
        return
    assert isinstance(out, Retry) and tag == RETRY_TAG and not enveloped


def _expect_request_ok(kind: Any, msg_id: Any, ts: Any, cookie: Any, method: Any,
                       args: Any) -> bool:
    return (isinstance(msg_id, bytes) and len(msg_id) == MSG_ID_SIZE
            and isinstance(ts, int) and not isinstance(ts, bool)
            and abs(NOW_MS - ts) <= MAX_SKEW_MS
            and kind == REQUEST
            and isinstance(cookie, bytes) and len(cookie) in (0, COOKIE_SIZE)
            and isinstance(method, str) and 0 < len(method) <= MAX_METHOD
            and isinstance(args, list))


some = msgpack_values
# Per field: a strategy of valid values and one of anything.  Each example
# spoils at most one field, so the oracle is tested on both sides of every check.
REQUEST_FIELDS = {
    "kind": (st.just(REQUEST),
             st.sampled_from([RESPONSE, 2, -1, None, "0", b"\x00", 0.5]) | some),
    "msg_id": (st.binary(min_size=MSG_ID_SIZE, max_size=MSG_ID_SIZE),
               st.binary(max_size=MSG_ID_SIZE + 2) | some),
    "ts": (st.integers(NOW_MS - MAX_SKEW_MS, NOW_MS + MAX_SKEW_MS),
           st.integers(NOW_MS - 2 * MAX_SKEW_MS, NOW_MS + 2 * MAX_SKEW_MS)
           | st.integers(-(2**63), 2**64 - 1) | some),
    "cookie": (st.sampled_from([b"", COOKIE]) | st.binary(min_size=COOKIE_SIZE,
                                                           max_size=COOKIE_SIZE),
               st.binary(max_size=COOKIE_SIZE + 2) | some),
    "method": (st.text(min_size=1, max_size=MAX_METHOD),
               st.text(max_size=MAX_METHOD + 3) | some),
    "args": (st.lists(some, max_size=4), some),
}


@st.composite
def request_fields(draw: st.DrawFn) -> dict[str, Any]:
    spoil = draw(st.sampled_from([None, *REQUEST_FIELDS]))
    return {name: draw(bad if name == spoil else good)
            for name, (good, bad) in REQUEST_FIELDS.items()}


@SETTINGS
@given(request_fields())
def test_signed_request_with_random_fields(f: dict[str, Any]) -> None:
    data = seal(DGRAM_TAG, [f["kind"], f["msg_id"], f["ts"], CERT.raw, f["cookie"],
                            f["method"], f["args"]], MEMBER.signing_key)
    ok = _expect_request_ok(f["kind"], f["msg_id"], f["ts"], f["cookie"], f["method"],
                            f["args"]) and len(data) <= MAX_DATAGRAM
    try:
        out = checker().decode_untrusted(data, NOW_MS)
    except BadMessage:
        assert not ok
        return
    assert ok
    assert isinstance(out, Request)
    assert (out.msg_id, out.ts_ms, out.cookie, out.method, out.args) == (
        f["msg_id"], f["ts"], f["cookie"], f["method"], msgpack.unpackb(packb(f["args"])))
    assert out.sender == MEMBER.id


@SETTINGS
@given(st.sampled_from([RESPONSE]) | REQUEST_FIELDS["kind"][1], REQUEST_FIELDS["msg_id"][0],
       REQUEST_FIELDS["ts"][0] | REQUEST_FIELDS["ts"][1], some, st.integers(3, 6))
def test_signed_response_with_random_fields(kind: Any, msg_id: Any, ts: Any, result: Any,
                                            n_fields: int) -> None:
    fields = [kind, msg_id, ts, CERT.raw, result, None][:n_fields]
    data = seal(DGRAM_TAG, fields, MEMBER.signing_key)
    ok = (kind == RESPONSE and n_fields == 5
          and isinstance(ts, int) and not isinstance(ts, bool)
          and abs(NOW_MS - ts) <= MAX_SKEW_MS and len(data) <= MAX_DATAGRAM)
    try:
        out = checker().decode_untrusted(data, NOW_MS)
    except BadMessage:
        assert not ok
        return
    assert ok and isinstance(out, Response) and out.sender == MEMBER.id
    assert (out.msg_id, out.ts_ms) == (msg_id, ts)
    assert out.result == msgpack.unpackb(packb(result))


# -- the address book ---------------------------------------------------------------------------

ADDR = ("10.1.2.3", 4000)
SLOT = AddressBook.SLOT
T0 = 1000 * SLOT  # the start of a slot


def test_cookie_valid_in_its_slot_and_the_next() -> None:
    book = AddressBook()
    c = book.cookie(ADDR, T0)
    assert len(c) == COOKIE_SIZE
    assert book.cookie(ADDR, T0 + SLOT - 1) == c  # same slot, same cookie
    for t in (T0, T0 + SLOT - 0.001, T0 + SLOT, T0 + 2 * SLOT - 0.001):
        assert book.cookie_valid(ADDR, c, t), t
    for t in (T0 + 2 * SLOT, T0 + 10 * SLOT, T0 - 0.001, T0 - SLOT):
        assert not book.cookie_valid(ADDR, c, t), t


def test_cookie_bound_to_address_and_secret() -> None:
    book = AddressBook()
    c = book.cookie(ADDR, T0)
    assert not book.cookie_valid(("10.1.2.4", 4000), c, T0)
    assert not book.cookie_valid(("10.1.2.3", 4001), c, T0)
    assert not book.cookie_valid(ADDR, b"", T0)
    assert not book.cookie_valid(ADDR, c[:-1], T0)
    assert not book.cookie_valid(ADDR, bytes(COOKIE_SIZE), T0)
    assert not AddressBook().cookie_valid(ADDR, c, T0)  # another node's secret
    assert book.cookie(("10.1.2.3", 40), T0) != book.cookie(("10.1.2.34", 0), T0)


def test_prove_lifetime_and_forget() -> None:
    book = AddressBook(lifetime=600.0)
    assert not book.is_proved(ADDR, T0)
    book.prove(ADDR, T0)
    assert book.is_proved(ADDR, T0)
    assert book.is_proved(ADDR, T0 + 600)
    assert not book.is_proved(ADDR, T0 + 600.001)
    assert not book.is_proved(("10.1.2.3", 4001), T0)
    book.prove(ADDR, T0 + 500)  # proving again extends
    assert book.is_proved(ADDR, T0 + 1000)
    book.forget(ADDR)
    assert not book.is_proved(ADDR, T0 + 501)
    book.forget(ADDR)  # forgetting twice is harmless
    assert not book.is_proved(ADDR, T0 + 501)


def test_address_book_is_bounded_least_recently_proved_first() -> None:
    book = AddressBook(max_entries=3)
    addrs = [("10.0.0.1", p) for p in range(5)]
    for a in addrs[:3]:
        book.prove(a, T0)
    book.prove(addrs[0], T0 + 1)  # refreshed: now the newest
    for a in addrs[3:]:
        book.prove(a, T0 + 2)
    assert len(book._proved) == 3
    assert [book.is_proved(a, T0 + 3) for a in addrs] == [True, False, False, True, True]


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 10_000)), max_size=50))
def test_address_book_stays_bounded(proofs: list[tuple[int, float]]) -> None:
    book = AddressBook(max_entries=4)
    for port, t in proofs:
        book.prove(("10.0.0.1", port), t)
        assert len(book._proved) <= 4
        assert book.is_proved(("10.0.0.1", port), t)
