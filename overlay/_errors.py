"""Error types of the overlay.

After h11: `BadMessage` is *their* fault (a peer, a file or a user handed us
bytes that do not check out); anything else escaping is *our* bug.
"""


class BadMessage(Exception):
    """Untrusted bytes (from the wire, a file or the DHT) failed a check."""


class IdentityError(Exception):
    """A local key or certificate file is missing, unreadable or unsafe.

    The message is one line that tells the admin what to do.
    """
