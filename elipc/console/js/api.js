// The HTTP API, as the console uses it: same origin, the bearer key (when the server wants
// one) in a header on every request (streams included: read with fetch, not EventSource,
// which cannot send headers), never in a URL or a cookie.

const KEY_SLOT = "elipc.apiKey";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Whether the server asked for a bearer key (index.html says so when IPC_API_KEY is set). */
export function keyRequired() {
  return document.documentElement.dataset.auth === "bearer";
}

/** The key this tab was given (sessionStorage: gone when the tab closes), or "". */
export function apiKey() {
  return sessionStorage.getItem(KEY_SLOT) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_SLOT, key);
  else sessionStorage.removeItem(KEY_SLOT);
}

let onUnauthorized = () => {};

/** Called when the server answers 401 for the key (missing or wrong). */
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

function headers(extra = {}) {
  const all = {Accept: "application/json", ...extra};
  const key = apiKey();
  if (key) all.Authorization = `Bearer ${key}`;
  return all;
}

/** A URL of this server: `path` with `params` (those undefined or "" left out). */
export function url(path, params = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === "") continue;
    for (const one of [value].flat()) query.append(name, String(one));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

async function request(path, options = {}) {
  let response;
  try {
    response = await fetch(path, {...options, headers: headers(options.headers),
                                  credentials: "omit", cache: "no-store"});
  } catch (error) {
    if (error.name === "AbortError") throw error;
    if (error instanceof TypeError && /[^\x00-\xff]/.test(apiKey() || "")) {
      throw new ApiError(0, "the API key has characters a browser cannot send in a header");
    }
    throw new ApiError(0, "the server cannot be reached");
  }
  // Only the API key's own refusal asks for the key again (a read that needs a signature
  // is a 401 too, and says so).
  if (response.status === 401 && await isKeyRefusal(response)) onUnauthorized();
  return response;
}

async function isKeyRefusal(response) {
  try {
    const body = await response.clone().json();
    return body && body.error === "unauthorized";
  } catch (_) {
    return false;
  }
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") message = body.error;
  } catch (_) { /* not JSON: keep the status line */ }
  return new ApiError(response.status, message);
}

/** GET `path` as JSON; with `page`, also whether more wait (the X-Elipc-More header). */
export async function get(path, params = {}, options = {}) {
  const response = await request(url(path, params), options);
  if (!response.ok) throw await failure(response);
  const body = await response.json();
  if (options.page) return {items: body, more: response.headers.get("X-Elipc-More") === "true"};
  return body;
}

/** POST `body` as JSON to `path`. */
export async function post(path, body, options = {}) {
  const response = await request(path, {
    method: "POST", body: JSON.stringify(body), ...options,
    headers: {"Content-Type": "application/json", ...(options.headers || {})},
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** The server-sent events of `path`, one {id, data} at a time, until the stream ends or
 *  `signal` aborts it. */
export async function* events(path, params, signal) {
  const response = await request(url(path, params), {
    signal, headers: {Accept: "text/event-stream"},
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = parseEvent(block);
      if (event) yield event;
    }
  }
}

function parseEvent(block) {
  let id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;  // a comment: the heartbeat
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") id = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? {id, data: data.join("\n")} : null;
}
