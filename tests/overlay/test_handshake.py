"""The secure channel's pure core: frames, handshake, session (no sockets)."""

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay import BadMessage, Certificate, GridInfo, KeyPair, packb
from overlay._handshake import (
    ABYTES,
    ClientHandshake,
    FrameReader,
    HandshakeRefused,
    ServerHandshake,
    Session,
    frame,
)
from overlay.rpc import _check_message_untrusted

from .common import NOW, SETTINGS, fixed_key

AUTH = fixed_key(1)
OTHER_AUTH = fixed_key(2)
SERVER = fixed_key(3)
CLIENT = fixed_key(4)
GRID = GridInfo.create(AUTH, "grid", NOW)
OTHER_GRID = GridInfo.create(OTHER_AUTH, "other", NOW)
YEAR = 365 * 86400


def cert(key: KeyPair, *, kind: str = "node", auth: KeyPair = AUTH,
         not_after: int = NOW + YEAR, roles: tuple[str, ...] = ()) -> Certificate:
    return Certificate.issue(auth, kind=kind, subject_key=key.public_key, name="x",
                             roles=roles, not_before=NOW - 2 * YEAR, not_after=not_after)


SERVER_CERT = cert(SERVER)
CLIENT_CERT = cert(CLIENT, kind="user", roles=("admin",))


def handshake(client: ClientHandshake | None = None, server: ServerHandshake | None = None,
              *, client_revoked: frozenset[bytes] = frozenset(),
              server_revoked: frozenset[bytes] = frozenset(),
              now: float = NOW) -> tuple[Session, Session]:
    client = client or ClientHandshake(CLIENT, CLIENT_CERT, GRID)
    server = server or ServerHandshake(SERVER, SERVER_CERT, GRID)
    m2 = server.receive_hello_untrusted(client.hello())
    m3 = client.receive_server_untrusted(m2, now=now, revoked=client_revoked)
    server_session, m4 = server.receive_client_untrusted(m3, now=now, revoked=server_revoked)
    return client.receive_verdict_untrusted(m4), server_session


def test_handshake_gives_each_side_the_other_and_a_working_session() -> None:
    c, s = handshake()
    assert c.peer.subject_id == SERVER.id and s.peer.subject_id == CLIENT.id
    assert s.peer.roles == ("admin",)
    for i in range(3):
        assert s.decrypt_untrusted(c.encrypt(b"up %d" % i)) == b"up %d" % i
        assert c.decrypt_untrusted(s.encrypt(b"down %d" % i)) == b"down %d" % i


def test_sessions_use_fresh_keys_each_time() -> None:
    c1, _ = handshake()
    _, s2 = handshake()
    with pytest.raises(BadMessage, match="does not decrypt"):
        s2.decrypt_untrusted(c1.encrypt(b"from another session"))


def test_certificates_never_travel_in_clear() -> None:
    client = ClientHandshake(CLIENT, CLIENT_CERT, GRID)
    server = ServerHandshake(SERVER, SERVER_CERT, GRID)
    m2 = server.receive_hello_untrusted(client.hello())
    m3 = client.receive_server_untrusted(m2, now=NOW, revoked=frozenset())
    for wire in (m2, m3):
        assert SERVER_CERT.subject_key not in wire and CLIENT_CERT.subject_key not in wire


def _refusal(**kw: Any) -> HandshakeRefused:
    with pytest.raises(HandshakeRefused) as info:
        handshake(**kw)
    return info.value


def test_client_of_another_grid_is_refused_at_hello_and_told_in_clear() -> None:
    other = ClientHandshake(CLIENT, cert(CLIENT, auth=OTHER_AUTH), OTHER_GRID)
    assert _refusal(client=other).code == "wrong_grid"
    server = ServerHandshake(SERVER, SERVER_CERT, GRID)
    with pytest.raises(HandshakeRefused) as info:
        server.receive_hello_untrusted(other.hello())
    with pytest.raises(HandshakeRefused, match="unauthenticated") as told:
        other.receive_server_untrusted(server.refusal(info.value), now=NOW,
                                       revoked=frozenset())
    assert told.value.code == "wrong_grid"


def test_certificate_of_another_grid_is_refused() -> None:
    # The hello names our grid, but the certificate was signed by another authority.
    liar = ClientHandshake(CLIENT, cert(CLIENT, auth=OTHER_AUTH), GRID)
    assert _refusal(client=liar).code == "wrong_grid"
    fake_server = ServerHandshake(SERVER, cert(SERVER, auth=OTHER_AUTH), GRID)
    assert _refusal(server=fake_server).code == "wrong_grid"


def test_expired_certificate_is_refused() -> None:
    old = ClientHandshake(CLIENT, cert(CLIENT, not_after=NOW - 3600), GRID)
    assert _refusal(client=old).code == "expired"


def test_revoked_member_is_refused_on_either_side() -> None:
    assert _refusal(server_revoked=frozenset({CLIENT.id})).code == "revoked"
    assert _refusal(client_revoked=frozenset({SERVER.id})).code == "revoked"


def test_signature_by_a_key_other_than_the_certificate_is_refused() -> None:
    # A thief holding someone's certificate but not its key.
    thief = ClientHandshake(fixed_key(9), CLIENT_CERT, GRID)
    assert _refusal(client=thief).code == "bad_signature"
    thief_server = ServerHandshake(fixed_key(9), SERVER_CERT, GRID)
    assert _refusal(server=thief_server).code == "bad_signature"


def test_server_must_be_a_node_and_the_expected_one() -> None:
    user_server = ServerHandshake(CLIENT, CLIENT_CERT, GRID)
    assert _refusal(server=user_server).code == "wrong_kind"
    picky = ClientHandshake(CLIENT, CLIENT_CERT, GRID, expect_id=fixed_key(7).id)
    assert _refusal(client=picky).code == "wrong_peer"


def test_refused_client_is_told_why_in_its_own_stream() -> None:
    client = ClientHandshake(CLIENT, cert(CLIENT, not_after=NOW - 3600), GRID)
    server = ServerHandshake(SERVER, SERVER_CERT, GRID)
    m3 = client.receive_server_untrusted(server.receive_hello_untrusted(client.hello()),
                                         now=NOW, revoked=frozenset())
    with pytest.raises(HandshakeRefused) as info:
        server.receive_client_untrusted(m3, now=NOW, revoked=frozenset())
    reply = server.refusal(info.value)
    with pytest.raises(HandshakeRefused, match="the node refused us: .*expired") as told:
        client.receive_verdict_untrusted(reply)
    assert told.value.code == "expired"


def test_replayed_client_messages_fail_against_a_fresh_server() -> None:
    client = ClientHandshake(CLIENT, CLIENT_CERT, GRID)
    server = ServerHandshake(SERVER, SERVER_CERT, GRID)
    m1 = client.hello()
    m3 = client.receive_server_untrusted(server.receive_hello_untrusted(m1), now=NOW,
                                         revoked=frozenset())
    server.receive_client_untrusted(m3, now=NOW, revoked=frozenset())
    # A recording of M1 and M3 played to the server again: new server ephemeral.
    again = ServerHandshake(SERVER, SERVER_CERT, GRID)
    again.receive_hello_untrusted(m1)
    with pytest.raises(BadMessage):
        again.receive_client_untrusted(m3, now=NOW, revoked=frozenset())


def test_replayed_server_messages_fail_against_a_fresh_client() -> None:
    client = ClientHandshake(CLIENT, CLIENT_CERT, GRID)
    m2 = ServerHandshake(SERVER, SERVER_CERT, GRID).receive_hello_untrusted(client.hello())
    fresh = ClientHandshake(CLIENT, CLIENT_CERT, GRID)
    fresh.hello()
    with pytest.raises(BadMessage):
        fresh.receive_server_untrusted(m2, now=NOW, revoked=frozenset())


def test_tampered_reordered_and_truncated_session_streams_are_refused() -> None:
    c, s = handshake()
    a, b = c.encrypt(b"first"), c.encrypt(b"second")
    with pytest.raises(BadMessage):
        s.decrypt_untrusted(b)  # reordered
    c, s = handshake()
    a = bytearray(c.encrypt(b"first"))
    a[-1] ^= 1
    with pytest.raises(BadMessage):
        s.decrypt_untrusted(bytes(a))  # tampered
    c, s = handshake()
    a = c.encrypt(b"first")
    assert s.decrypt_untrusted(a) == b"first"
    with pytest.raises(BadMessage):
        s.decrypt_untrusted(a)  # replayed within the session
    c, s = handshake()
    s.decrypt_untrusted(c.encrypt(b"bye", final=True))
    assert s.finished
    with pytest.raises(BadMessage, match="after the end"):
        s.decrypt_untrusted(c.encrypt(b"more"))


def test_frame_reader_splits_and_refuses_oversized_lengths_unread() -> None:
    r = FrameReader(10)
    data = frame(b"abc") + frame(b"") + frame(b"0123456789")
    for i in range(len(data)):  # one byte at a time
        r.feed(data[i:i + 1])
    assert [r.next_frame_untrusted() for _ in range(4)] == [b"abc", b"", b"0123456789", None]
    r.feed((11).to_bytes(4, "big"))
    with pytest.raises(BadMessage, match="exceeds the cap"):
        r.next_frame_untrusted()
    huge = FrameReader(10)
    huge.feed(b"\xff\xff\xff\xff")
    with pytest.raises(BadMessage):
        huge.next_frame_untrusted()
    assert huge.buffered == 4  # nothing allocated for the claimed 4 GiB


def test_oversized_plaintext_is_our_bug_not_the_peers() -> None:
    c, _ = handshake()
    with pytest.raises(ValueError):
        c.encrypt(b"x" * (c.max_frame + 1))


# -- hypothesis: every decoder returns or raises BadMessage ------------------------------

def _only_bad_message(fn: Any, *args: Any, **kw: Any) -> None:
    try:
        fn(*args, **kw)
    except BadMessage:
        pass


def _junk() -> st.SearchStrategy[bytes]:
    leaf = st.one_of(st.none(), st.integers(-2**63, 2**64 - 1), st.binary(max_size=40),
                     st.text(max_size=10), st.booleans())
    tree = st.recursive(leaf, lambda x: st.lists(x, max_size=5), max_leaves=12)
    return st.one_of(st.binary(max_size=200), tree.map(packb))


@SETTINGS
@given(data=_junk())
def test_server_hello_decoder_returns_or_raises_bad_message(data: bytes) -> None:
    _only_bad_message(ServerHandshake(SERVER, SERVER_CERT, GRID).receive_hello_untrusted, data)


@SETTINGS
@given(data=_junk(), fields=st.lists(_junk(), max_size=4))
def test_server_identity_decoder_returns_or_raises_bad_message(data: bytes,
                                                               fields: list[bytes]) -> None:
    server = ServerHandshake(SERVER, SERVER_CERT, GRID)
    server.receive_hello_untrusted(ClientHandshake(CLIENT, CLIENT_CERT, GRID).hello())
    _only_bad_message(server.receive_client_untrusted, data, now=NOW, revoked=frozenset())
    _only_bad_message(server.receive_client_untrusted, packb(fields), now=NOW,
                      revoked=frozenset())


@SETTINGS
@given(data=_junk(), flip=st.integers(0, 10_000))
def test_client_decoders_return_or_raise_bad_message(data: bytes, flip: int) -> None:
    client = ClientHandshake(CLIENT, CLIENT_CERT, GRID)
    _only_bad_message(client.receive_server_untrusted, data, now=NOW, revoked=frozenset())
    # A real M2 with one flipped bit.
    client = ClientHandshake(CLIENT, CLIENT_CERT, GRID)
    m2 = bytearray(ServerHandshake(SERVER, SERVER_CERT, GRID).receive_hello_untrusted(
        client.hello()))
    m2[flip % len(m2)] ^= 1 << (flip % 8)
    _only_bad_message(client.receive_server_untrusted, bytes(m2), now=NOW, revoked=frozenset())


@SETTINGS
@given(data=st.binary(max_size=300))
def test_session_and_frame_decoders_return_or_raise_bad_message(data: bytes) -> None:
    _, s = handshake()
    _only_bad_message(s.decrypt_untrusted, data)
    r = FrameReader(64)
    r.feed(data)
    try:
        while r.next_frame_untrusted() is not None:
            pass
    except BadMessage:
        pass


@SETTINGS
@given(msg=st.recursive(st.one_of(st.none(), st.integers(-5, 2**64), st.text(max_size=5)),
                        lambda x: st.lists(x, max_size=6), max_leaves=10))
def test_rpc_message_checker_returns_or_raises_bad_message(msg: Any) -> None:
    try:
        kind, call_id = _check_message_untrusted(msg)
    except BadMessage:
        return
    assert 0 <= kind <= 7 and call_id >= 0


def test_ciphertext_overhead_is_one_tag() -> None:
    c, _ = handshake()
    assert len(c.encrypt(b"12345")) == 5 + ABYTES
    assert msgpack.unpackb(packb([1])) == [1]


@pytest.mark.parametrize("cert_bytes", [b"", b"not a certificate"])
def test_client_without_a_certificate_is_refused(cert_bytes: bytes,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import overlay._handshake as hs

    def no_cert(key: KeyPair, cert: Certificate, transcript: bytes) -> bytes:
        return packb([cert_bytes, key.signing_key.sign(transcript).signature])

    client = ClientHandshake(CLIENT, CLIENT_CERT, GRID)
    server = ServerHandshake(SERVER, SERVER_CERT, GRID)
    m2 = server.receive_hello_untrusted(client.hello())
    monkeypatch.setattr(hs, "_identity_payload", no_cert)
    m3 = client.receive_server_untrusted(m2, now=NOW, revoked=frozenset())
    with pytest.raises(HandshakeRefused) as info:
        server.receive_client_untrusted(m3, now=NOW, revoked=frozenset())
    assert info.value.code == "bad_certificate"
