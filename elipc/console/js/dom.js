// Building the page without ever parsing data as markup: every text goes in through
// textContent or an attribute, never parsed as HTML. Messages, names and errors are untrusted.

/** An element: `el("a", {href: "#x", class: "y"}, "text", child, ...)`. */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

/** Append children: nodes as they are, strings and numbers as text. */
export function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace everything inside `node` with `children`. */
export function fill(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

const svgNS = "http://www.w3.org/2000/svg";

/** An SVG element with attributes. */
export function svg(tag, attributes = {}) {
  const node = document.createElementNS(svgNS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  return node;
}

/** A <time> for a Unix time in seconds: local date and time, machine-readable. */
export function time(seconds) {
  const date = new Date(seconds * 1000);
  const label = date.toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
  return el("time", {datetime: date.toISOString(), title: date.toISOString()}, label);
}

/** "5 s ago", "3 min ago", ...: how long since a Unix time. */
export function ago(seconds) {
  if (!seconds) return "never";
  const passed = Math.max(0, Date.now() / 1000 - seconds);
  if (passed < 60) return `${Math.round(passed)} s ago`;
  if (passed < 3600) return `${Math.round(passed / 60)} min ago`;
  if (passed < 86400) return `${Math.round(passed / 3600)} h ago`;
  return `${Math.round(passed / 86400)} d ago`;
}

/** `text` as nodes, with each occurrence of `words` (case-insensitive) in a <mark>. */
export function highlighted(text, words) {
  const wanted = words.map((w) => w.replace(/\*+$/, "").toLowerCase()).filter(Boolean);
  if (!wanted.length) return [text];
  const lower = text.toLowerCase();
  const nodes = [];
  let at = 0;
  while (at < text.length) {
    let next = -1, length = 0;
    for (const word of wanted) {
      const found = lower.indexOf(word, at);
      if (found >= 0 && (next < 0 || found < next)) { next = found; length = word.length; }
    }
    if (next < 0) break;
    if (next > at) nodes.push(text.slice(at, next));
    nodes.push(el("mark", {}, text.slice(next, next + length)));
    at = next + length;
  }
  if (at < text.length) nodes.push(text.slice(at));
  return nodes;
}
