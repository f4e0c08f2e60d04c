// Full-text search across messages (GET /search), by channel and sender, newest first;
// each result links into its channel at that message.

import * as api from "./api.js";
import {el, fill, time, highlighted} from "./dom.js";
import {channelHref} from "./channels.js";

function result(message, words) {
  const text = el("p", {class: "content"}, highlighted(message.content, words));
  return el("li", {class: "result", "data-id": message.id},
    el("header", {},
       el("a", {href: channelHref(message.channel, message.id), class: "result-link"},
          message.channel, el("span", {class: "id"}, ` #${message.id}`)),
       el("span", {class: "sender"}, message.sender), time(message.timestamp)),
    text,
    message.truncated ? el("p", {class: "hint"},
      `(the first ${message.content.length.toLocaleString()} of ` +
      `${message.content_length.toLocaleString()} characters)`) : null);
}

export function mount(main, _argument, params) {
  const abort = new AbortController();
  const input = (id, label, value, extra = {}) => el("div", {class: "field"},
    el("label", {for: id}, label),
    el("input", {id, name: id, value: value || "", autocomplete: "off", ...extra}));
  const form = el("form", {class: "search-form", role: "search"},
    input("q", "Words to find", params.get("q"), {type: "search", required: true}),
    input("search-channel", "In channel", params.get("channel")),
    input("search-sender", "From sender", params.get("sender")),
    el("button", {type: "submit"}, "Search"));
  const status = el("p", {class: "search-status", role: "status"});
  const results = el("ol", {class: "results", "aria-label": "Results"});
  const more = el("button", {type: "button", class: "more", hidden: true}, "Older results");
  fill(main, el("section", {class: "panel search", "aria-labelledby": "search-title"},
    el("h1", {id: "search-title"}, "Search"), form, status, results, more));

  let beforeId = null;
  const query = () => ({q: params.get("q"), channel: params.get("channel") || undefined,
                        sender: params.get("sender") || undefined});
  async function load() {
    const wanted = query();
    if (!wanted.q) return;
    status.textContent = "Searching…";
    try {
      const page = await api.get("/search", {...wanted, before_id: beforeId ?? undefined},
                                 {page: true, signal: abort.signal});
      const words = wanted.q.split(/\s+/);
      results.append(...page.items.map((m) => result(m, words)));
      if (page.items.length) beforeId = page.items[page.items.length - 1].id;
      const shown = results.children.length;
      status.textContent = shown
        ? `${shown.toLocaleString()} message${shown === 1 ? "" : "s"}${page.more ? " so far" : ""}.`
        : "Nothing found.";
      more.hidden = !page.more;
    } catch (error) {
      if (!abort.signal.aborted) status.textContent = `Search failed: ${error.message}`;
    }
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [name, id] of [["q", "q"], ["channel", "search-channel"],
                              ["sender", "search-sender"]]) {
      const value = form.querySelector(`#${id}`).value.trim();
      if (value) next.set(name, value);
    }
    location.hash = `#/search?${next}`;
  });
  more.addEventListener("click", load);
  if (!params.get("q")) form.querySelector("#q").focus();
  load();
  return () => abort.abort();
}
