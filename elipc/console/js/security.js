// Security events (GET /security) and their counts: every refusal the server made. In
// secure mode only an operator reads them, with a read signature made in this page.

import * as api from "./api.js";
import {el, fill, time} from "./dom.js";
import {state, secureMode, ready, agents} from "./state.js";
import {identityForm} from "./identity.js";

const CHANNEL = "elipc/security";
const CONTEXT = ["sender", "agent", "channel", "operator", "suppressed_before"];

function counts(answer) {
  const kinds = Object.entries(answer.counts).sort((a, b) => b[1] - a[1]);
  if (!kinds.length) return el("p", {class: "quiet-text"}, "No refusals since the server started.");
  return el("table", {class: "counts-table"},
    el("caption", {}, "Refusals since the server started"),
    el("thead", {}, el("tr", {}, el("th", {scope: "col"}, "Kind"), el("th", {scope: "col"}, "Count"))),
    el("tbody", {}, kinds.map(([kind, n]) =>
      el("tr", {"data-kind": kind}, el("th", {scope: "row"}, kind), el("td", {}, n)))));
}

function event(e) {
  const context = CONTEXT.filter((k) => e[k] !== undefined).map((k) =>
    el("span", {class: "context"}, `${k}: ${e[k]}`));
  return el("li", {class: "event", "data-id": e.id},
    el("header", {}, el("span", {class: "kind"}, e.kind || "event"), time(e.timestamp),
       e.remote ? el("span", {class: "remote"}, `from ${e.remote}`) : null, context),
    el("p", {class: "reason"}, e.reason ?? ""));
}

export function mount(main) {
  const abort = new AbortController();
  const body = el("div");
  const identity = el("div");
  fill(main, el("section", {class: "panel security", "aria-labelledby": "security-title"},
    el("h1", {id: "security-title"}, "Security"), identity, body));
  let beforeId = null;
  const list = el("ol", {class: "events", "aria-label": "Security events, newest first"});
  const more = el("button", {type: "button", class: "more", hidden: true}, "Older events");

  async function headers() {
    if (!secureMode()) return {};
    return state.signer.readHeaders(CHANNEL);
  }

  async function load(first) {
    try {
      const answer = await api.get("/security", {
        agent: secureMode() ? state.signer.name : undefined, before_id: beforeId ?? undefined,
      }, {signal: abort.signal, headers: await headers()});
      if (first) {
        fill(body, el("h2", {}, "Counts"), counts(answer), el("h2", {}, "Events"), list, more);
      }
      list.append(...answer.events.map(event));
      if (answer.events.length) beforeId = answer.events[answer.events.length - 1].id;
      if (first && !answer.events.length) list.append(el("li", {class: "quiet-text"}, "No events stored."));
      more.hidden = !answer.more;
    } catch (error) {
      if (!abort.signal.aborted) fill(body, el("p", {class: "error"}, error.message));
    }
  }

  async function start() {
    beforeId = null;
    list.replaceChildren();
    const signer = state.signer;
    const operator = !!signer && (await agents(true)).get(signer.name)?.role === "operator";
    if (secureMode() && !operator) {
      // The counts are public (GET /health has them); the events are not.
      fill(identity, el("p", {}, "In secure mode the security events are for operators."),
           identityForm("Sign in as an operator: your name and key file (read here only).",
                        start, "operator"));
      fill(body, el("h2", {}, "Counts"),
           counts({counts: state.health.security_events || {}}));
      return;
    }
    if (secureMode()) {
      fill(identity, identityForm("", start, "operator"));
    } else {
      fill(identity, el("p", {class: "lead"}, "Open mode: anyone who can reach the server ",
                        "(with its API key, when set) sees these."));
    }
    await load(true);
  }
  more.addEventListener("click", () => load(false));
  ready().then(() => { if (!abort.signal.aborted) start(); });
  return () => abort.abort();
}
