"""Ed25519 identities: keys and key files, the canonical signed payloads, sign/verify, did:key.

Private keys are PKCS#8 PEM, public keys SubjectPublicKeyInfo PEM, signatures base64, all as
el-ipc wrote them. The CLI imports this module only when a key is involved (it loads the
cryptography library, which costs start-up time). No Twisted import here.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import tempfile
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from elipc.model import IdentityError as IdentityError  # callers catch it from here
from elipc.model import Message, Signed

SIGNATURE_BYTES = 64
# multicodec "ed25519-pub" (0xed, as an unsigned varint: 0xed 0x01), per the did:key spec.
_ED25519_MULTICODEC = b"\xed\x01"


# -- canonical payloads (one place builds each) ------------------------------------------
# elipc/2 payloads start with "elipc/2 <purpose>", and channels may not start with "elipc/",
# so no el-ipc payload (which starts with the channel) can ever equal an elipc/2 one, and a
# signature made for one purpose (send, read, register) is useless for another.


def send_payload(channel: str, sender: str, timestamp: int, nonce: str, content: str) -> bytes:
    """elipc/2 send: timestamp and nonce make a captured signature useless for a replay."""
    return f"elipc/2 send\n{channel}\n{sender}\n{timestamp}\n{nonce}\n{content}".encode("utf-8")


def read_payload(channel: str, agent: str, timestamp: int, nonce: str) -> bytes:
    """elipc/2 read: proves the reader is `agent` before its watermark moves."""
    return f"elipc/2 read\n{channel}\n{agent}\n{timestamp}\n{nonce}".encode("utf-8")


def ack_payload(channel: str, agent: str, up_to: int, timestamp: int, nonce: str) -> bytes:
    """elipc/2 ack: `agent` moves its own watermark on `channel` to `up_to`."""
    return f"elipc/2 ack\n{channel}\n{agent}\n{up_to}\n{timestamp}\n{nonce}".encode("utf-8")


def stream_payload(channels: list[str], agent: str, timestamp: int, nonce: str) -> bytes:
    """elipc/2 stream: proves the reader is `agent` before a stream of `channels` (in the
    order of the request) moves its watermarks."""
    return "\n".join(["elipc/2 stream", agent, str(timestamp), nonce, *channels]).encode("utf-8")


def register_payload(name: str, identity: str, timestamp: int, public_key_pem: str) -> bytes:
    """elipc/2 register: an operator's authorization of `name`'s key, at `timestamp`."""
    return (f"elipc/2 register\n{name}\n{identity}\n{timestamp}\n{public_key_pem}"
            .encode("utf-8"))


def legacy_send_payload(channel: str, sender: str, content: str) -> bytes:
    """el-ipc's signed bytes for a message (replayable; refused in strict mode)."""
    return f"{channel}\n{sender}\n{content}".encode("utf-8")


def sign_send(key: Ed25519PrivateKey, channel: str, sender: str, content: str,
              timestamp: int) -> Signed:
    """An elipc/2 send signature with a fresh nonce: what every signing sender attaches."""
    nonce = new_nonce()
    payload = send_payload(channel, sender, timestamp, nonce, content)
    return Signed(sign(key, payload), timestamp, nonce)


def new_nonce() -> str:
    """A fresh nonce: 24 characters of A-Za-z0-9_- (144 random bits)."""
    return secrets.token_urlsafe(18)


# -- keys ---------------------------------------------------------------------------------


def generate_keypair() -> tuple[str, str]:
    """A new Ed25519 keypair as (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)."""
    key = Ed25519PrivateKey.generate()
    return private_pem(key), public_pem(key.public_key())


def private_pem(key: Ed25519PrivateKey) -> str:
    """The unencrypted PKCS#8 PEM text of `key`."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def public_pem(key: Ed25519PublicKey) -> str:
    """The SubjectPublicKeyInfo PEM text of `key`."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def parse_private_key(pem: str | bytes, source: str = "key") -> Ed25519PrivateKey:
    """Parse an unencrypted Ed25519 PKCS#8 PEM private key, or raise IdentityError."""
    data = pem.encode("utf-8", "replace") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise IdentityError(f"{source} is encrypted; elipc needs an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise IdentityError(f"{source} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{source} is not an Ed25519 private key")
    return key


def parse_public_key(pem: str | bytes, source: str = "public key") -> Ed25519PublicKey:
    """Parse an Ed25519 SubjectPublicKeyInfo PEM public key, or raise IdentityError."""
    data = pem.encode("utf-8", "replace") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise IdentityError(f"{source} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise IdentityError(f"{source} is not an Ed25519 public key")
    return key


def load_private_key(path: str) -> Ed25519PrivateKey:
    """Read and parse the private key file at `path`."""
    return parse_private_key(_read_key_file(path), f"key file {path}")


def load_public_key_text(path: str) -> str:
    """Read the public key file at `path`; return its PEM text, stripped as el-ipc stores it."""
    text = _read_key_file(path).decode("utf-8", "replace").strip()
    parse_public_key(text, f"public key file {path}")
    return text


def _read_key_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(64 * 1024)
    except OSError as e:
        raise IdentityError(f"cannot read key file {path}: {e.strerror}") from None


def save_keypair(prefix: str, private: str, public: str, force: bool = False) -> tuple[str, str]:
    """Write `prefix.key` (0600) and `prefix.pub` (0644); refuse to replace either unless `force`."""
    paths = (f"{prefix}.key", f"{prefix}.pub")
    if not force:
        for path in paths:
            if os.path.lexists(path):
                raise IdentityError(f"{path} exists; pass --force to overwrite it")
    write_key_file(paths[0], private, 0o600, force)
    write_key_file(paths[1], public, 0o644, force)
    return paths


def write_key_file(path: str, text: str, mode: int, force: bool = False) -> None:
    """Write `text` to a new file of `mode`, atomically; an existing file needs `force`."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=".elipc-key-")
    except OSError as e:
        raise IdentityError(f"cannot write {path}: {e.strerror}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _install(temporary, path, force)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _install(temporary: str, path: str, force: bool) -> None:
    try:
        if force:
            os.replace(temporary, path)
        else:
            # link() fails if `path` exists, so a key is never overwritten by a race either.
            os.link(temporary, path)
            os.unlink(temporary)
    except FileExistsError:
        raise IdentityError(f"{path} exists; pass --force to overwrite it") from None
    except OSError as e:
        raise IdentityError(f"cannot write {path}: {e.strerror}") from None


# -- signatures ---------------------------------------------------------------------------


def sign(key: Ed25519PrivateKey, payload: bytes) -> str:
    """The base64 Ed25519 signature of `payload`."""
    return base64.b64encode(key.sign(payload)).decode("ascii")


def decode_signature(signature: str) -> bytes | None:
    """The 64 raw bytes of a base64 signature, or None if it is not one."""
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    return raw if len(raw) == SIGNATURE_BYTES else None


def verify(public_key_pem: str, payload: bytes, signature: str) -> bool:
    """Whether `signature` (base64) is the key's valid signature of `payload`."""
    raw = decode_signature(signature)
    if raw is None:
        return False
    try:
        parse_public_key(public_key_pem).verify(raw, payload)
    except (InvalidSignature, IdentityError):
        return False
    return True


def verify_message(public_key_pem: str, channel: str, message: Message) -> bool:
    """Whether `message` on `channel` carries a valid signature by `public_key_pem`: over the
    elipc/2 payload when it has a nonce, else over el-ipc's."""
    if not message.signature:
        return False
    if message.nonce is not None and message.signed_timestamp is not None:
        payload = send_payload(channel, message.sender, message.signed_timestamp,
                               message.nonce, message.content)
    else:
        payload = legacy_send_payload(channel, message.sender, message.content)
    return verify(public_key_pem, payload, message.signature)


def marked_verified(channel: str, message: Message, public_key_pem: str | None) -> dict[str, Any]:
    """`message` as JSON plus "verified": whether its sender's key (None: unknown sender)
    signed it. What `read --verify` prints, locally and remotely."""
    verified = public_key_pem is not None and verify_message(public_key_pem, channel, message)
    return {**message.as_json(), "verified": verified}


def key_matches(key: Ed25519PrivateKey, public_key_pem: str) -> bool:
    """Whether `key` is the private half of the stored `public_key_pem`."""
    return public_pem(key.public_key()).strip() == public_key_pem.strip()


# -- did:key ------------------------------------------------------------------------------


def did_key_from_raw(raw_public_key: bytes) -> str:
    """did:key of a raw 32-byte Ed25519 public key: `did:key:z` + base58btc(0xed01 + key)."""
    import base58  # only the agent card and directory need it; keep it off the send path

    return "did:key:z" + base58.b58encode(_ED25519_MULTICODEC + raw_public_key).decode("ascii")


def did_key(public_key_pem: str) -> str:
    """did:key of a PEM public key."""
    raw = parse_public_key(public_key_pem).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return did_key_from_raw(raw)


def key_fingerprint(public_key_pem: str) -> str:
    """OpenSSH's fingerprint of a PEM public key: `SHA256:` and the unpadded base64 of the
    SHA-256 of its raw 32 bytes (what a person compares at a glance)."""
    import hashlib

    raw = parse_public_key(public_key_pem).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode("ascii").rstrip("=")
