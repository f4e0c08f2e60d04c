// The directory (GET /agents): each operator and agent, its role, who registered it and
// when, its did:key and key fingerprint.

import * as api from "./api.js";
import {el, fill, time} from "./dom.js";

function row(agent) {
  return el("tr", {"data-agent": agent.name},
    el("th", {scope: "row"}, agent.name,
       agent.identity ? el("span", {class: "hint"}, ` (${agent.identity})`) : null),
    el("td", {}, el("span", {class: `role ${agent.role}`}, agent.role)),
    el("td", {}, agent.registered_by || "—"),
    el("td", {}, time(agent.created_at)),
    el("td", {class: "did"}, el("code", {}, agent.did || "—")),
    el("td", {class: "fingerprint"}, el("code", {}, agent.fingerprint || "—")));
}

export function mount(main) {
  const abort = new AbortController();
  const body = el("div", {class: "table-wrap"});
  fill(main, el("section", {class: "panel agents", "aria-labelledby": "agents-title"},
    el("h1", {id: "agents-title"}, "Agents"),
    el("p", {class: "lead"}, "Operators authorize agents' keys; a message is verified ",
       "against its sender's key here."),
    body));
  api.get("/agents", {}, {signal: abort.signal}).then((agents) => {
    if (!agents.length) {
      fill(body, el("p", {class: "quiet-text"},
        "Nobody is registered: the server is in open mode (elipc seed starts secure mode)."));
      return;
    }
    fill(body, el("table", {class: "agents-table"},
      el("caption", {class: "visually-hidden"}, "The directory, oldest first"),
      el("thead", {}, el("tr", {}, ["Name", "Role", "Registered by", "Registered",
                                    "did:key", "Key fingerprint"].map((h) =>
        el("th", {scope: "col"}, h)))),
      el("tbody", {}, agents.map(row))));
  }).catch((error) => {
    if (!abort.signal.aborted) fill(body, el("p", {class: "error"}, error.message));
  });
  return () => abort.abort();
}
