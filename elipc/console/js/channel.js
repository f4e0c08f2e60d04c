// One channel: its messages live (GET /stream from the newest id, history mode: moving
// nothing), older ones paged in as you scroll back (timeline.js), the delivery state beside
// them and the compose form below.

import * as api from "./api.js";
import {el, fill} from "./dom.js";
import {state, secureMode, reserved, sleep, subscribe, ready} from "./state.js";
import {Timeline} from "./timeline.js";
import {followDelivery} from "./delivery.js";
import {mountCompose, focusCompose} from "./compose.js";

async function follow(timeline, after, live, signal) {
  let cursor = after;
  let backoff = 1000;
  while (!signal.aborted) {
    try {
      live.textContent = "live";
      live.className = "live on";
      for await (const event of api.events("/stream", {channel: timeline.channel,
                                                       after_id: cursor}, signal)) {
        const message = JSON.parse(event.data);
        cursor = Math.max(cursor, message.id);
        backoff = 1000;
        timeline.live(message);
      }
    } catch (error) {
      if (signal.aborted || error.status === 401) return;
      if (error.status && error.status < 500 && error.status !== 429) {
        live.textContent = `not live: ${error.message}`;
        live.className = "live off";
        return;
      }
    }
    live.textContent = "reconnecting…";
    live.className = "live off";
    await sleep(backoff);
    backoff = Math.min(backoff * 2, 15000);
  }
}

function operatorsOnly(main, channel) {
  fill(main, el("section", {class: "panel"},
    el("h1", {}, channel),
    el("p", {}, "In secure mode the elipc/ channels are read by operators only. The ",
       el("a", {href: "#/security"}, "Security view"),
       " shows the security events to an operator who signs in with their key.")));
}

export function mount(main, channel, params) {
  const abort = new AbortController();
  const stops = [() => abort.abort()];
  if (reserved(channel) && !state.health) {  // whether it may be read depends on the mode
    ready().then(() => { if (!abort.signal.aborted) stops.push(mount(main, channel, params)); });
    return () => stops.forEach((stop) => stop());
  }
  if (reserved(channel) && secureMode()) {
    operatorsOnly(main, channel);
    return () => stops.forEach((stop) => stop());
  }
  const count = el("span", {class: "channel-count"});
  const live = el("span", {class: "live", role: "status"}, "connecting…");
  const status = el("p", {class: "timeline-status", "aria-live": "polite"});
  const list = el("div", {class: "messages", role: "log", "aria-label": `Messages on ${channel}`});
  const scroller = el("div", {class: "timeline", tabindex: "0",
                              "aria-label": `${channel}, scroll back for older messages`},
                      status, list);
  const jump = el("button", {type: "button", class: "jump", hidden: true});
  const delivery = el("aside", {class: "delivery", "aria-labelledby": "delivery-title"});
  const compose = el("section", {class: "compose", "aria-label": "Write a message"});
  fill(main, el("section", {class: "channel-view", "aria-labelledby": "channel-title"},
    el("header", {class: "channel-head"},
       el("h1", {id: "channel-title"}, channel), count, live),
    el("div", {class: "channel-body"},
       el("div", {class: "timeline-wrap"}, scroller, jump), delivery),
    compose));
  const timeline = new Timeline(channel, scroller, list, status, jump);
  const showCount = () => {
    const entry = state.channels.get(channel);
    count.textContent = entry
      ? `${entry.count.toLocaleString()} message${entry.count === 1 ? "" : "s"}` : "";
  };
  showCount();
  stops.push(subscribe((kind) => { if (kind === "channels") showCount(); }));
  stops.push(mountCompose(compose, channel));
  followDelivery(delivery, channel, abort.signal);

  const at = Number(params.get("at"));
  (async () => {
    try {
      // Where the live stream starts: the newest message now (then the page shown).
      const newest = await api.get("/history", {channel, before_id: "9223372036854775807",
                                                limit: 1}, {page: true, signal: abort.signal});
      const after = newest.items.length ? newest.items[0].id : 0;
      if (Number.isSafeInteger(at) && at > 0) await timeline.showAround(at);
      else await timeline.showLatest();
      follow(timeline, after, live, abort.signal);
    } catch (error) {
      if (!abort.signal.aborted) status.textContent = `Could not load ${channel}: ${error.message}`;
    }
  })();
  const onKey = (event) => {
    const target = event.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement) return;
    if (event.key === "n" && !event.ctrlKey && !event.metaKey && !event.altKey) {
      event.preventDefault();
      focusCompose();
    } else if (event.key === "End" && target === document.body) {
      event.preventDefault();
      timeline.jumpToLatest();
    }
  };
  document.addEventListener("keydown", onKey);
  stops.push(() => document.removeEventListener("keydown", onKey));
  return () => stops.forEach((stop) => stop());
}
