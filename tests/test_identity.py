"""Ed25519 identities: payloads, signatures, key files and did:key."""

from __future__ import annotations

import base64
import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from elipc import identity
from elipc.identity import IdentityError
from tests.helpers import temp_dir

W3C_PUBLIC_KEY = bytes.fromhex("3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29")
W3C_DID = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"


class DidKeyTests(SynchronousTestCase):
    """did:key is multicodec 0xed01 + the raw key, base58btc, as the W3C spec says."""

    def test_w3c_vector(self) -> None:
        """The W3C test vector's public key gives the W3C did:key."""
        self.assertEqual(identity.did_key_from_raw(W3C_PUBLIC_KEY), W3C_DID)

    def test_from_pem(self) -> None:
        """A PEM public key gives the same did:key as its raw bytes."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        pem = identity.public_pem(Ed25519PublicKey.from_public_bytes(W3C_PUBLIC_KEY))
        self.assertEqual(identity.did_key(pem), W3C_DID)


class SignatureTests(SynchronousTestCase):
    """Signatures cover el-ipc's canonical payloads and only verify with the right key."""

    def setUp(self) -> None:
        private, self.public = identity.generate_keypair()
        self.key = identity.parse_private_key(private)

    def test_payloads_byte_for_byte(self) -> None:
        """Each payload is the documented newline-joined UTF-8, starting with its purpose."""
        self.assertEqual(identity.legacy_send_payload("c", "s", "hé"), "c\ns\nhé".encode())
        self.assertEqual(identity.send_payload("c", "s", 1700000000, "n0nce-123", "hé"),
                         "elipc/2 send\nc\ns\n1700000000\nn0nce-123\nhé".encode())
        self.assertEqual(identity.read_payload("c", "a", 1700000000, "n0nce-123"),
                         b"elipc/2 read\nc\na\n1700000000\nn0nce-123")
        self.assertEqual(identity.register_payload("n", "i", 1700000000, "PEM"),
                         b"elipc/2 register\nn\ni\n1700000000\nPEM")

    def test_nonces(self) -> None:
        """New nonces are 24 URL-safe characters and never repeat."""
        nonces = {identity.new_nonce() for _ in range(1000)}
        self.assertEqual(len(nonces), 1000)
        self.assertTrue(all(len(n) == 24 for n in nonces))

    def test_sign_verify(self) -> None:
        """A signature verifies for its payload and key, and for nothing else."""
        payload = identity.legacy_send_payload("c", "s", "x")
        signature = identity.sign(self.key, payload)
        self.assertEqual(len(base64.b64decode(signature)), 64)
        self.assertTrue(identity.verify(self.public, payload, signature))
        self.assertFalse(identity.verify(self.public, identity.legacy_send_payload("c", "s", "y"),
                                         signature))
        _, other = identity.generate_keypair()
        self.assertFalse(identity.verify(other, payload, signature))

    def test_malformed_signatures_do_not_verify(self) -> None:
        """Garbage, short, non-ASCII or non-base64 signatures are simply invalid."""
        payload = b"x"
        for bad in ("", "!!!", base64.b64encode(b"short").decode(), "é", "A" * 90):
            self.assertFalse(identity.verify(self.public, payload, bad), bad)
        self.assertIsNone(identity.decode_signature("not base64!"))

    def test_key_matches(self) -> None:
        """key_matches tells a key's own public half from another's."""
        self.assertTrue(identity.key_matches(self.key, self.public))
        self.assertFalse(identity.key_matches(self.key, identity.generate_keypair()[1]))


class KeyFileTests(SynchronousTestCase):
    """Key files: written 0600, never overwritten silently, read with clear errors."""

    def setUp(self) -> None:
        self.dir = temp_dir(self)
        self.prefix = os.path.join(self.dir, "herald")

    def test_save_modes(self) -> None:
        """The private key file is 0600, the public one 0644, and both load back."""
        private, public = identity.generate_keypair()
        key_file, pub_file = identity.save_keypair(self.prefix, private, public)
        self.assertEqual(stat.S_IMODE(os.stat(key_file).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(pub_file).st_mode), 0o644)
        self.assertTrue(identity.key_matches(identity.load_private_key(key_file),
                                             identity.load_public_key_text(pub_file)))

    def test_refuses_to_overwrite(self) -> None:
        """An existing key file is kept unless force is given, and then replaced 0600."""
        first = identity.generate_keypair()
        identity.save_keypair(self.prefix, *first)
        second = identity.generate_keypair()
        self.assertRaises(IdentityError, identity.save_keypair, self.prefix, *second)
        with open(self.prefix + ".key") as f:
            self.assertEqual(f.read(), first[0])
        os.chmod(self.prefix + ".key", 0o644)
        identity.save_keypair(self.prefix, *second, force=True)
        with open(self.prefix + ".key") as f:
            self.assertEqual(f.read(), second[0])
        self.assertEqual(stat.S_IMODE(os.stat(self.prefix + ".key").st_mode), 0o600)
        self.assertEqual([n for n in os.listdir(self.dir) if n.startswith(".")], [])

    def write(self, name: str, content: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(content)
        return path

    def test_bad_private_key_files(self) -> None:
        """Missing, garbage, public-instead-of-private and non-Ed25519 files say what is wrong."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        cases = {
            os.path.join(self.dir, "missing.key"): "cannot read",
            self.write("garbage.key", b"\x00\xffnot a key"): "not a PEM private key",
            self.write("public.key", identity.generate_keypair()[1].encode()): "not a PEM",
            self.write("ec.key", other): "not an Ed25519",
        }
        for path, expected in cases.items():
            with self.assertRaises(IdentityError) as caught:
                identity.load_private_key(path)
            self.assertIn(expected, str(caught.exception))
            self.assertIn(path, str(caught.exception))

    def test_bad_public_key_file(self) -> None:
        """A public key file holding a private key or garbage is refused."""
        private = self.write("p.pub", identity.generate_keypair()[0].encode())
        self.assertRaises(IdentityError, identity.load_public_key_text, private)
        self.assertRaises(IdentityError, identity.load_public_key_text,
                          self.write("g.pub", b"-----BEGIN PUBLIC KEY-----\nxx\n"))
