"""pysyncobj's message framing, made cheaper: no zlib, AES-256-GCM instead of Fernet, and
pickle protocol 4 instead of 2.

pysyncobj turns each Raft message into a frame in its tick, once per follower: pickle,
zlib (level 3), then, with a cluster secret, Fernet (AES-CBC, HMAC-SHA256, base64). Two or
three frames sit on every commit's critical path (the leader's append to each follower, the
follower's acknowledgement), so their cost is latency, not only CPU (docs/benchmarks.md):

- zlib: setting up a deflate stream costs more than the rest of a small frame's handling, and
  our messages are small
  (a batch of encoded commands, an acknowledgement) on links where bandwidth is not the limit.
  Frames now go out uncompressed; the receiver still inflates a compressed one (a zlib stream
  starts with 0x78, a pickle of pysyncobj's protocol 2 with 0x80).
- Fernet: several times slower to seal and open a small frame than one AES-GCM call, and a
  third larger on the wire. ``AeadFrames`` seals with AES-256-GCM in one call and keeps what
  pysyncobj relies on: a frame that was forged or altered is refused before it is unpickled
  (``decrypt`` raises and pysyncobj drops the connection), and each frame carries the sender's
  timestamp, authenticated before pysyncobj reads it, for its check that timestamps never go
  back.
- Pickle protocol 2 (pysyncobj's choice, for Python 2): it has no bytes type, so it writes every
  bytes value as a latin-1 str and a call to ``_codecs.encode``. Each log entry is our batch of
  encoded commands, as bytes, pickled once into the entry and again into each append message.
  Protocol 4 pickles and unpickles such a message several times faster and a third smaller
  (docs/benchmarks.md has the figures). Every Python 3 reads both protocols, so journals, dump files
  and nodes that still write protocol 2 go on working.

All three are installed for the whole process before any SyncObj is built (``install``).
"""

from __future__ import annotations

import os
import struct
import zlib

import pysyncobj.pickle as pysyncobj_pickle
import pysyncobj.syncobj as syncobj_module
import pysyncobj.tcp_connection as tcp_connection
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from jobqueue.errors import BeanraftError

_PICKLE_PROTO = 0x80  # the first byte of any pickle of protocol 2 or later
PICKLE_PROTOCOL = 4  # Python 3.4 and later read it
_VERSION = b"\x01"
_HEADER = struct.Struct(">cQ")  # version, sender's timestamp (whole seconds, monotonic)
_NONCE_BYTES = 12
_TAG_BYTES = 16
_SALT = b"beanraft raft transport v1"
KDF_ITERATIONS = 100_000  # once per process start, as pysyncobj's own key derivation


class FrameRefused(BeanraftError, ValueError):
    """A frame that is not an intact ``AeadFrames`` frame under this cluster's secret."""


class AeadFrames:
    """The ``encryptor`` pysyncobj calls for every frame (Fernet's ``encrypt_at_time``,
    ``extract_timestamp`` and ``decrypt``), sealing with AES-256-GCM under a key derived from
    the cluster secret. A frame is version | timestamp | nonce | ciphertext and tag; version and
    timestamp are authenticated as associated data. Nonces are random: 96 bits keep a
    collision negligible for any number of frames a cluster sends under one secret."""

    def __init__(self, secret: str | bytes) -> None:
        raw = secret.encode() if isinstance(secret, str) else secret
        kdf = PBKDF2HMAC(hashes.SHA256(), length=32, salt=_SALT, iterations=KDF_ITERATIONS)
        self._aead = AESGCM(kdf.derive(raw))

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        header = _HEADER.pack(_VERSION, current_time)
        nonce = os.urandom(_NONCE_BYTES)
        return header + nonce + self._aead.encrypt(nonce, data, header)

    def extract_timestamp(self, token: bytes) -> int:
        # Authenticated first, as Fernet's is: pysyncobj records this timestamp as the
        # connection's newest before it calls decrypt, so a forged one must not get that far.
        self.decrypt(token)
        timestamp: int = _HEADER.unpack_from(token)[1]
        return timestamp

    def decrypt(self, token: bytes) -> bytes:
        if len(token) < _HEADER.size + _NONCE_BYTES + _TAG_BYTES or token[:1] != _VERSION:
            raise FrameRefused("not a beanraft Raft frame (another version or garbage)")
        header = token[: _HEADER.size]
        nonce = token[_HEADER.size : _HEADER.size + _NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, token[_HEADER.size + _NONCE_BYTES :], header)
        except Exception as exc:  # InvalidTag: forged, altered, or another cluster's secret
            raise FrameRefused("a Raft frame failed authentication") from exc


class _Uncompressed:
    """Stands in for the ``zlib`` module inside ``pysyncobj.tcp_connection``."""

    @staticmethod
    def compress(data: bytes, level: int = -1) -> bytes:
        return data

    @staticmethod
    def decompress(data: bytes) -> bytes:
        if data[:1] == bytes((_PICKLE_PROTO,)):
            return data
        return zlib.decompress(data)


def install() -> None:
    """Use all three for every SyncObj this process builds from now on (idempotent)."""
    if (
        not hasattr(tcp_connection, "zlib")
        or not hasattr(syncobj_module, "getEncryptor")
        or getattr(pysyncobj_pickle, "__protocol", None) not in (2, PICKLE_PROTOCOL)
    ):
        raise RuntimeError("pysyncobj's framing code changed: review cluster/raft_wire.py")
    tcp_connection.zlib = _Uncompressed
    syncobj_module.getEncryptor = AeadFrames
    # A module global, read by pysyncobj.pickle.dump(s) at every call.
    setattr(pysyncobj_pickle, "__protocol", PICKLE_PROTOCOL)  # setattr: the name as it is
