// The console's entry: asks for the API key when the server wants one (before any request),
// then mounts the channel list, the health bar and the view the address names
// (#/channels, #/c/NAME, #/search, #/agents, #/security), and the keyboard keys.

import * as api from "./api.js";
import * as state from "./state.js";
import {mountSidebar, focusFilter, moveSelection} from "./channels.js";
import {mountHealth} from "./health.js";

// Each view's module is loaded when first shown: the channel list and the health bar (and
// their first requests) do not wait for every view's code.
const views = {
  channels: () => import("./overview.js"),
  c: () => import("./channel.js"),
  search: () => import("./search.js"),
  agents: () => import("./agents.js"),
  security: () => import("./security.js"),
};
let unmount = null;
let started = false;
let shown = 0;  // the latest show(): an older one whose module came late does not mount

function route() {
  const hash = location.hash.replace(/^#\/?/, "") || "channels";
  const [path, query = ""] = hash.split("?");
  const [name, ...rest] = path.split("/");
  const view = views[name] ? name : "channels";
  let argument = "";
  try {
    argument = decodeURIComponent(rest.join("/"));
  } catch (_) { /* a malformed address: no argument */ }
  return {view, argument, params: new URLSearchParams(query)};
}

async function show() {
  if (!started) return;
  const {view, argument, params} = route();
  if (unmount) unmount();
  unmount = null;
  const ticket = ++shown;
  const module = await views[view]();
  if (ticket !== shown) return;
  const main = document.getElementById("main");
  main.replaceChildren();
  document.getElementById("layout").dataset.view = view;
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    const current = link.dataset.view === (view === "c" ? "channels" : view);
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  unmount = module.mount(main, argument, params) || null;
}

function askForKey(message = "") {
  const dialog = document.getElementById("key-dialog");
  document.getElementById("key-error").textContent = message;
  if (!dialog.open) dialog.showModal();
  document.getElementById("key-input").focus();
}

async function tryKey(key) {
  api.setApiKey(key);
  try {
    await api.get("/activity");
    return true;
  } catch (error) {
    api.setApiKey("");
    return false;
  }
}

function start() {
  if (started) return;
  started = true;
  mountSidebar(document.getElementById("sidebar"));
  mountHealth(document.getElementById("health"));
  state.start();
  show();
}

function typing(target) {
  return target instanceof HTMLElement &&
    (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

const keys = {
  c: () => { location.hash = "#/channels"; },
  a: () => { location.hash = "#/agents"; },
  e: () => { location.hash = "#/security"; },
  "/": () => {
    if (location.hash.startsWith("#/search")) document.getElementById("q")?.focus();
    else location.hash = "#/search";  // the search view focuses its field
  },
  f: () => focusFilter(),
  j: () => moveSelection(1),
  k: () => moveSelection(-1),
  "?": () => openHelp(),
};

function openHelp() {
  const help = document.getElementById("help-dialog");
  if (!help.open) help.showModal();
}

function onKey(event) {
  if (event.key === "Escape" && typing(event.target)) {
    event.target.blur();
    return;
  }
  if (typing(event.target) || event.ctrlKey || event.metaKey || event.altKey) return;
  if (document.querySelector("dialog[open]")) return;
  const action = keys[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
}

function wire() {
  document.getElementById("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("key-input");
    if (await tryKey(input.value)) {
      input.value = "";
      document.getElementById("key-dialog").close();
      if (started) {  // the key was refused while running: carry on
        state.start();
        show();
      } else start();
    } else {
      askForKey("That key was refused.");
    }
  });
  document.getElementById("key-dialog").addEventListener("cancel", (event) => {
    event.preventDefault();  // nothing works without it
  });
  document.getElementById("help-button").addEventListener("click", openHelp);
  document.getElementById("help-close").addEventListener("click",
    () => document.getElementById("help-dialog").close());
  window.addEventListener("hashchange", show);
  document.addEventListener("keydown", onKey);
  api.whenUnauthorized(() => {
    api.setApiKey("");
    askForKey("The server refused the key: give it again.");
  });
}

wire();
if (api.keyRequired() && !api.apiKey()) askForKey();
else start();
