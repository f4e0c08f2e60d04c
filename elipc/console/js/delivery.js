// Delivery state for the open channel: each agent's watermark and how many messages wait
// for it (GET /delivery, which moves nothing), polled while the channel is open.

import * as api from "./api.js";
import {el, fill} from "./dom.js";
import {sleep} from "./state.js";

const POLL_MS = 2000;

function table(state) {
  if (!state.agents.length) {
    return el("p", {class: "quiet-text"}, "No agent has read this channel yet.");
  }
  const rows = [...state.agents].sort((a, b) => b.pending - a.pending ||
                                                a.agent.localeCompare(b.agent));
  return el("table", {class: "delivery-table"},
    el("caption", {class: "visually-hidden"}, "Each agent's watermark and unread count"),
    el("thead", {}, el("tr", {},
      el("th", {scope: "col"}, "Agent"), el("th", {scope: "col"}, "Read up to"),
      el("th", {scope: "col"}, "Pending"))),
    el("tbody", {}, rows.map((r) => {
      const meter = el("meter", {min: 0, max: Math.max(1, state.count), value: r.pending,
                                 "aria-hidden": "true"});
      return el("tr", {class: r.pending ? "behind" : "caught-up", "data-agent": r.agent},
        el("th", {scope: "row"}, r.agent),
        el("td", {"data-watermark": r.watermark}, `#${r.watermark}`),
        el("td", {"data-pending": r.pending}, r.pending.toLocaleString(), " ", meter,
           r.pending ? "" : el("span", {class: "visually-hidden"}, "(caught up)")));
    })),
    state.more ? el("caption", {}, "(the first 1,000 agents)") : null);
}

/** Fill `panel` with the delivery state of `channel` until `signal` aborts. */
export async function followDelivery(panel, channel, signal) {
  const body = el("div", {class: "delivery-body", "aria-live": "off"});
  fill(panel, el("h2", {id: "delivery-title"}, "Delivery"),
       el("p", {class: "hint"}, "Who has read what; nothing here moves a watermark."), body);
  while (!signal.aborted) {
    if (!document.hidden) {
      try {
        fill(body, table(await api.get("/delivery", {channel}, {signal})));
      } catch (error) {
        if (signal.aborted || error.status === 401) return;
        fill(body, el("p", {class: "error"}, `Delivery state unavailable: ${error.message}`));
        if (error.status && error.status < 500 && error.status !== 429) return;
      }
    }
    await sleep(POLL_MS);
  }
}
