// Ed25519 in the page, through WebCrypto: checking the signatures of messages, and signing
// as the person's agent or operator with a key file they pick. The private key is imported
// non-extractable and kept in this page's memory only: never stored, never sent.

const encoder = new TextEncoder();

/** Why this page cannot use Ed25519, or "" when it can. */
export function unavailable() {
  if (!window.isSecureContext || !crypto.subtle) {
    return "signing and checking signatures need a secure context (https, or the server on " +
           "localhost / 127.0.0.1)";
  }
  return "";
}

let supported = null;

/** Whether WebCrypto here knows Ed25519 (asked once). */
export async function ed25519Supported() {
  if (unavailable()) return false;
  if (supported === null) {
    try {
      await crypto.subtle.generateKey({name: "Ed25519"}, false, ["sign", "verify"]);
      supported = true;
    } catch (_) {
      supported = false;
    }
  }
  return supported;
}

function pemBytes(pem, label) {
  const match = new RegExp(`-----BEGIN ${label}-----([^-]+)-----END ${label}-----`).exec(pem);
  if (!match) return null;
  try {
    return Uint8Array.from(atob(match[1].replace(/\s+/g, "")), (c) => c.charCodeAt(0));
  } catch (_) {
    return null;
  }
}

function base64(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes)));
}

function base64url(bytes) {
  return base64(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function fromBase64(text) {
  try {
    return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  } catch (_) {
    return null;
  }
}

const publicKeys = new Map();

async function publicKey(pem) {
  if (!publicKeys.has(pem)) {
    const der = pemBytes(pem, "PUBLIC KEY");
    publicKeys.set(pem, der ? crypto.subtle.importKey("spki", der, {name: "Ed25519"}, false,
                                                      ["verify"]).catch(() => null) : null);
  }
  return publicKeys.get(pem);
}

/** The bytes a send signature covers (identity.send_payload; el-ipc's without a nonce). */
export function sendPayload(channel, message) {
  if (message.nonce !== undefined && message.signed_timestamp !== undefined) {
    return `elipc/2 send\n${channel}\n${message.sender}\n${message.signed_timestamp}\n` +
           `${message.nonce}\n${message.content}`;
  }
  return `${channel}\n${message.sender}\n${message.content}`;
}

/** Whether `message` on `channel` carries a valid signature by `pem` (null: cannot tell). */
export async function verifyMessage(channel, message, pem) {
  if (!message.signature || !pem || !(await ed25519Supported())) return null;
  const key = await publicKey(pem);
  const signature = fromBase64(message.signature);
  if (!key || !signature) return false;
  try {
    return await crypto.subtle.verify("Ed25519", key, signature,
                                      encoder.encode(sendPayload(channel, message)));
  } catch (_) {
    return false;
  }
}

/** A signing identity: a name and the private key from the file the person picked. */
export class Signer {
  constructor(name, key) {
    this.name = name;
    this.key = key;
  }

  /** Read a PKCS#8 PEM Ed25519 key file (a File from an <input type=file>). The key is
   * imported non-extractable: nothing in the page can read it back. */
  static async fromFile(name, file) {
    if (!(await ed25519Supported())) throw new Error(unavailable() || "this browser has no Ed25519");
    if (file.size > 64 * 1024) throw new Error("that file is too large to be a key file");
    const der = pemBytes(await file.text(), "PRIVATE KEY");
    if (!der) throw new Error("that file is not a PEM private key (elipc keygen writes NAME.key)");
    let key;
    try {
      key = await crypto.subtle.importKey("pkcs8", der, {name: "Ed25519"}, false, ["sign"]);
    } catch (_) {
      throw new Error("that file is not an unencrypted Ed25519 private key");
    } finally {
      der.fill(0);
    }
    return new Signer(name, key);
  }

  /** Whether this key is the private half of the registered public key `pem`: a random
   * challenge signed here verifies under it. */
  async matches(pem) {
    const verifier = await publicKey(pem);
    if (!verifier) return false;
    const challenge = crypto.getRandomValues(new Uint8Array(32));
    const signature = await crypto.subtle.sign("Ed25519", this.key, challenge);
    return crypto.subtle.verify("Ed25519", verifier, signature, challenge);
  }

  async sign(payload) {
    return base64(await crypto.subtle.sign("Ed25519", this.key, encoder.encode(payload)));
  }

  /** A /send body for `content` on `channel`, signed the elipc/2 way. */
  async sendBody(channel, content) {
    const timestamp = Math.floor(Date.now() / 1000);
    const nonce = newNonce();
    const signature = await this.sign(
      sendPayload(channel, {sender: this.name, signed_timestamp: timestamp, nonce, content}));
    return {channel, sender: this.name, content, timestamp, nonce, signature};
  }

  /** The X-Elipc-* headers of an elipc/2 read of `channel` as this name. */
  async readHeaders(channel) {
    const timestamp = Math.floor(Date.now() / 1000);
    const nonce = newNonce();
    const signature = await this.sign(
      `elipc/2 read\n${channel}\n${this.name}\n${timestamp}\n${nonce}`);
    return {"X-Elipc-Timestamp": String(timestamp), "X-Elipc-Nonce": nonce,
            "X-Elipc-Signature": signature};
  }
}

/** 24 characters of A-Za-z0-9_- (144 random bits), as identity.new_nonce. */
export function newNonce() {
  return base64url(crypto.getRandomValues(new Uint8Array(18)));
}
