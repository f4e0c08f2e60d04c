// The health bar: status, secure or open mode, waiting long-polls and open streams, and a
// sparkline of messages a second over the last minute (from the activity poll).

import {el, fill, svg} from "./dom.js";
import {state, subscribe} from "./state.js";

const WIDTH = 120, HEIGHT = 24;

function sparkline() {
  const rates = state.rates;
  const peak = Math.max(1, ...rates);
  const line = svg("polyline", {class: "spark-line", fill: "none"});
  const step = WIDTH / 59;
  const start = 60 - rates.length;
  line.setAttribute("points", rates.map((rate, i) =>
    `${((start + i) * step).toFixed(1)},${(HEIGHT - 2 - (rate / peak) * (HEIGHT - 4)).toFixed(1)}`)
    .join(" "));
  const now = rates.length ? rates[rates.length - 1] : 0;
  const chart = svg("svg", {viewBox: `0 0 ${WIDTH} ${HEIGHT}`, width: WIDTH, height: HEIGHT,
                            class: "spark", role: "img",
                            "aria-label": `Messages a second over the last minute: now ` +
                                          `${now.toFixed(1)}, peak ${Math.max(0, ...rates).toFixed(1)}`});
  chart.append(line);
  return {chart, now};
}

function figure(label, value, extra = {}) {
  return el("span", {class: "figure", ...extra}, el("span", {class: "figure-label"}, label),
            " ", el("strong", {}, value));
}

function render(node) {
  const health = state.health;
  if (!state.reachable || !health) {
    fill(node, el("span", {class: "status down", role: "status"},
                  state.reachable ? "connecting…" : "server unreachable"));
    return;
  }
  const {chart, now} = sparkline();
  fill(node,
       el("span", {class: "status ok"}, el("span", {class: "dot", "aria-hidden": "true"}),
          health.status),
       el("span", {class: health.secure_mode ? "mode secure" : "mode open",
                   title: health.secure_mode ? "every send and read must be signed"
                                             : "no operator yet: nothing is signed"},
          health.secure_mode ? "secure mode" : "open mode"),
       figure("long-polls", health.long_polls, {"data-figure": "long-polls"}),
       figure("streams", health.streams, {"data-figure": "streams"}),
       el("span", {class: "rate"}, chart,
          el("span", {"data-figure": "rate"}, `${now.toFixed(1)} msg/s`)));
}

// The Security link carries how many refusals the server counted since it started.
function badge() {
  const link = document.querySelector('nav a[data-view="security"]');
  if (!link || !state.health) return;
  const total = Object.values(state.health.security_events || {}).reduce((a, b) => a + b, 0);
  let mark = link.querySelector(".badge");
  if (!total) {
    mark?.remove();
    return;
  }
  if (!mark) {
    mark = el("span", {class: "badge"});
    link.append(" ", mark);
  }
  mark.textContent = total.toLocaleString();
  mark.setAttribute("aria-label", `${total} refusals`);
}

export function mountHealth(node) {
  subscribe((kind) => {
    if (kind === "health") {
      render(node);
      badge();
    }
  });
  render(node);
}
