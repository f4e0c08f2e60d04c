// The channel list (the sidebar): every channel with its message count, when it last spoke
// and a mark while it is active, kept live by state.js; filtered by name as you type.

import {el, fill, ago} from "./dom.js";
import {state, subscribe, isActive, reserved} from "./state.js";

let list = null;
let filter = null;
let summary = null;
let rendered = new Map();  // channel -> its <li>

/** The channel the address names, if any. */
function openChannel() {
  const match = /^#\/c\/([^?]*)/.exec(location.hash);
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch (_) {
    return null;
  }
}

export function channelHref(name, at) {
  return `#/c/${encodeURIComponent(name)}${at ? `?at=${at}` : ""}`;
}

function row(entry) {
  const mark = el("span", {class: "activity", "aria-hidden": "true"});
  const count = el("span", {class: "count"});
  const when = el("span", {class: "when"});
  const label = el("span", {class: "label"});
  const link = el("a", {href: channelHref(entry.channel), class: "channel-link"},
                  mark, el("span", {class: "name"}, entry.channel), count, when, label);
  const item = el("li", {"data-channel": entry.channel}, link);
  item.parts = {mark, count, when, label, link};
  return item;
}

function update(item, entry) {
  const {mark, count, when, label, link} = item.parts;
  const active = isActive(entry);
  mark.classList.toggle("on", active);
  count.textContent = entry.count.toLocaleString();
  when.textContent = ago(entry.last_message);
  when.title = entry.last_message ? new Date(entry.last_message * 1000).toLocaleString() : "";
  label.textContent = active ? "active" : "";
  label.className = active ? "visually-hidden" : "";
  link.toggleAttribute("data-reserved", reserved(entry.channel));
  if (entry.channel === openChannel()) link.setAttribute("aria-current", "page");
  else link.removeAttribute("aria-current");
}

function render() {
  const wanted = filter.value.trim().toLowerCase();
  const entries = [...state.channels.values()]
    .filter((e) => !wanted || e.channel.toLowerCase().includes(wanted))
    .sort((a, b) => (b.last_message || 0) - (a.last_message || 0) ||
                    a.channel.localeCompare(b.channel));
  const next = new Map();
  const items = entries.map((entry) => {
    const item = rendered.get(entry.channel) || row(entry);
    update(item, entry);
    next.set(entry.channel, item);
    return item;
  });
  rendered = next;
  // Reorder only when the order changed: focus and scroll position stay where they were.
  const current = [...list.children];
  if (current.length !== items.length || current.some((node, i) => node !== items[i])) {
    list.replaceChildren(...items);
  }
  fill(summary, wanted
    ? `${entries.length} of ${state.channels.size} channels`
    : `${state.channels.size} channel${state.channels.size === 1 ? "" : "s"}`);
}

/** Build the sidebar into `aside`. */
export function mountSidebar(aside) {
  filter = el("input", {id: "channel-filter", type: "search", autocomplete: "off",
                        placeholder: "Filter by name", "aria-controls": "channel-list"});
  summary = el("p", {class: "summary", "aria-live": "polite"});
  list = el("ul", {id: "channel-list", class: "channel-list"});
  fill(aside,
       el("h2", {class: "visually-hidden"}, "Channels"),
       el("label", {for: "channel-filter", class: "filter-label"}, "Filter channels"),
       filter, summary, list);
  filter.addEventListener("input", render);
  subscribe((kind) => { if (kind === "channels") render(); });
  window.addEventListener("hashchange", render);
  setInterval(render, 5000);  // the times and marks age
  render();
}

export function focusFilter() {
  filter?.focus();
}

/** Move the focus to the next (1) or previous (-1) channel in the list. */
export function moveSelection(step) {
  const links = [...list.querySelectorAll("a")];
  if (!links.length) return;
  const at = links.indexOf(document.activeElement);
  const from = at >= 0 ? at : links.findIndex((a) => a.getAttribute("aria-current"));
  const next = links[Math.min(links.length - 1, Math.max(0, (from < 0 ? -1 : from) + step))];
  next.focus();
}
