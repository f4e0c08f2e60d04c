// The console's entry: asks for the API key when the server wants one (before any request),
// then mounts the channel list, the health bar and the view the address names
// (#/channels, #/c/NAME, #/search, #/agents, #/security), and the keyboard keys.

import * as api from "./api.js";
import * as state from "./state.js";
import {mountSidebar, focusFilter, moveSelection} from "./channels.js";
import {mountHealth} from "./health.js";
import * as channel from "./channel.js";
import * as search from "./search.js";
import * as agents from "./agents.js";
import * as security from "./security.js";
import * as overview from "./overview.js";

const views = {channels: overview, c: channel, search, agents, security};
let unmount = null;
let started = false;

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

function show() {
  if (!started) return;
  const {view, argument, params} = route();
  if (unmount) unmount();
  const main = document.getElementById("main");
  main.replaceChildren();
  document.getElementById("layout").dataset.view = view;
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    const current = link.dataset.view === (view === "c" ? "channels" : view);
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  unmount = views[view].mount(main, argument, params) || null;
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
  "/": () => { location.hash = "#/search"; setTimeout(() => document.getElementById("q")?.focus(), 0); },
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
