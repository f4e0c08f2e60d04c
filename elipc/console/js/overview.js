// The channels view's main panel: what the server holds at a glance, the busiest channels
// right now, and where to go next. (The list itself is the sidebar, channels.js.)

import {el, fill} from "./dom.js";
import {state, subscribe, isActive} from "./state.js";
import {channelHref} from "./channels.js";

function render(panel) {
  const channels = [...state.channels.values()];
  const messages = channels.reduce((sum, c) => sum + c.count, 0);
  const active = channels.filter(isActive).sort((a, b) => b.last_message - a.last_message);
  fill(panel,
       el("h1", {}, "Channels"),
       el("p", {class: "lead"},
          `${channels.length.toLocaleString()} channels, ${messages.toLocaleString()} messages.`,
          " Pick a channel to read it live; ", el("a", {href: "#/search"}, "search"),
          " across all of them."),
       el("h2", {}, "Active now"),
       active.length
         ? el("ul", {class: "busy"}, active.slice(0, 12).map((c) =>
             el("li", {}, el("a", {href: channelHref(c.channel)}, c.channel),
                ` — ${c.count.toLocaleString()} messages`)))
         : el("p", {class: "quiet-text"}, "No channel has spoken in the last ten seconds."));
}

export function mount(main) {
  const panel = el("section", {class: "panel overview", "aria-labelledby": "overview-title"});
  main.append(panel);
  const update = () => {
    render(panel);
    panel.querySelector("h1").id = "overview-title";
  };
  update();
  const stop = subscribe((kind) => { if (kind === "channels") update(); });
  const ageing = setInterval(update, 5000);  // "active now" ends without a new message
  return () => {
    stop();
    clearInterval(ageing);
  };
}
