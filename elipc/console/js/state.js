// What every view shares: the channels and their activity, the health figures, the
// directory, and the signing identity the person picked (in memory only). One poll of
// GET /activity a second feeds the channel list, the activity marks and the health bar.

import * as api from "./api.js";

const ACTIVE_FOR_S = 10;       // a channel that gained messages this recently is "active"
const POLL_MS = 1000;          // GET /activity while the page is visible
const HIDDEN_POLL_MS = 5000;   // ... and while it is not
const RESYNC_MS = 5 * 60 * 1000;  // the full channel list again (retention deletes, races)
const SPARK_POINTS = 60;

export const state = {
  channels: new Map(),      // name -> {channel, count, last_message, last_id, active_until}
  lastId: null,
  health: null,             // the last /activity answer (status, secure_mode, ...)
  reachable: true,
  rates: [],                // messages a second, one point per poll, oldest first
  agents: null,             // name -> agent (the directory), loaded on demand
  signer: null,             // signing.Signer the person loaded, or null
};

const listeners = new Set();

/** Call `listener(kind)` when the channels ("channels") or the health ("health") change. */
export function subscribe(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function emit(kind) {
  for (const listener of listeners) listener(kind);
}

/** Whether an elipc/ channel, which the server writes and in secure mode only operators read. */
export function reserved(channel) {
  return channel.startsWith("elipc/");
}

/** Whether `entry` gained messages in the last ACTIVE_FOR_S seconds (seen by the poll, or
 *  by its last message's time when the page loaded). */
export function isActive(entry) {
  const now = Date.now() / 1000;
  return (entry.active_until || 0) > now || now - (entry.last_message || 0) < ACTIVE_FOR_S;
}

async function loadChannels() {
  const list = await api.get("/channels");
  const known = state.channels;
  state.channels = new Map(list.map((c) => [c.channel, {
    ...c, last_id: known.get(c.channel)?.last_id, active_until: known.get(c.channel)?.active_until,
  }]));
  emit("channels");
}

function applyActivity(answer, seconds) {
  const now = Date.now() / 1000;
  let added = 0;
  for (const change of answer.channels) {
    added += change.added;
    const entry = state.channels.get(change.channel) ||
      {channel: change.channel, count: 0, last_message: change.last_message};
    entry.count += change.added;
    entry.last_message = Math.max(entry.last_message || 0, change.last_message);
    entry.last_id = change.last_id;
    entry.active_until = now + ACTIVE_FOR_S;
    state.channels.set(change.channel, entry);
  }
  if (state.lastId !== null) {
    state.rates.push(seconds > 0 ? added / seconds : 0);
    if (state.rates.length > SPARK_POINTS) state.rates.shift();
  }
  state.lastId = answer.last_id;
  state.health = answer;
  if (answer.channels.length) emit("channels");
  emit("health");
}

let polling = false;

/** Load the channels, then follow the server's activity until the page goes away. */
export async function start() {
  if (polling) return;
  polling = true;
  let lastPoll = performance.now();
  let lastResync = 0;  // the channels load first, inside the loop: a refusal (a key gone
                       // stale) or an unreachable server ends or retries it like any poll
  for (;;) {
    try {
      if (Date.now() - lastResync > RESYNC_MS) {
        await loadChannels();
        lastResync = Date.now();
      }
      const answer = await api.get("/activity", {after_id: state.lastId ?? undefined});
      const now = performance.now();
      applyActivity(answer, (now - lastPoll) / 1000);
      lastPoll = now;
      if (!state.reachable) {
        state.reachable = true;
        await loadChannels();
      }
    } catch (error) {
      if (error.status === 401) { polling = false; return; }
      state.reachable = false;
      emit("health");
    }
    await sleep(document.hidden ? HIDDEN_POLL_MS : POLL_MS);
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The directory by name (fetched again when older than a minute or when `fresh`). */
let agentsAt = 0;
export async function agents(fresh = false) {
  if (fresh || !state.agents || Date.now() - agentsAt > 60_000) {
    const list = await api.get("/agents");
    state.agents = new Map(list.map((a) => [a.name, a]));
    agentsAt = Date.now();
  }
  return state.agents;
}

export function secureMode() {
  return !!state.health?.secure_mode;
}

/** Resolves once the first /activity answer is in (secure mode is known). */
export function ready() {
  if (state.health) return Promise.resolve();
  return new Promise((resolve) => {
    const stop = subscribe((kind) => {
      if (kind === "health" && state.health) {
        stop();
        resolve();
      }
    });
  });
}
