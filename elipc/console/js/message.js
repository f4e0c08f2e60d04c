// One message on screen: sender, time, id, its signed / verified marks, and its content as
// text (a message is untrusted input: textContent only), folded when long.

import {el, time} from "./dom.js";
import {verifyMessage, unavailable} from "./signing.js";
import {agents, secureMode} from "./state.js";

const FOLD_CHARS = 1200;
const FOLD_LINES = 16;

function marks(channel, message) {
  const holder = el("span", {class: "marks"});
  if (!message.signed) {
    // Worth saying only where signing is the rule.
    if (secureMode()) holder.append(el("span", {class: "mark unsigned", title: "not signed"},
                                       "unsigned"));
    return holder;
  }
  const mark = el("span", {class: "mark signed", title: "signed; checking…"}, "signed");
  holder.append(mark);
  checkSignature(channel, message, mark);
  return holder;
}

async function checkSignature(channel, message, mark) {
  if (unavailable()) {
    mark.title = `signed (not checked here: ${unavailable()})`;
    return;
  }
  let directory;
  try {
    directory = await agents();
  } catch (_) {
    return;
  }
  const sender = directory.get(message.sender);
  const verified = await verifyMessage(channel, message, sender?.public_key);
  if (verified === true) {
    mark.textContent = "verified";
    mark.className = "mark verified";
    mark.title = `signed by ${message.sender}'s registered key`;
  } else if (verified === false) {
    mark.textContent = "not verified";
    mark.className = "mark unverified";
    mark.title = sender ? `the signature is not ${message.sender}'s registered key's`
                        : `${message.sender} is not in the directory`;
  }
}

function content(message) {
  const text = el("pre", {class: "content"});
  text.textContent = message.content;
  const lines = message.content.split("\n", FOLD_LINES + 1).length;
  if (message.content.length <= FOLD_CHARS && lines <= FOLD_LINES) return [text];
  text.classList.add("folded");
  text.id = `content-${message.id}`;
  const toggle = el("button", {type: "button", class: "fold", "aria-expanded": "false",
                               "aria-controls": text.id},
                    `Show all (${message.content.length.toLocaleString()} characters)`);
  toggle.addEventListener("click", () => {
    const folded = text.classList.toggle("folded");
    toggle.setAttribute("aria-expanded", String(!folded));
    toggle.textContent = folded
      ? `Show all (${message.content.length.toLocaleString()} characters)` : "Fold";
  });
  return [text, toggle];
}

/** The <article> for `message` on `channel`. */
export function messageNode(channel, message) {
  const node = el("article", {class: "message", "data-id": message.id, tabindex: "-1",
                              "aria-labelledby": `from-${message.id}`},
    el("header", {},
       el("span", {class: "sender", id: `from-${message.id}`}, message.sender),
       time(message.timestamp),
       el("span", {class: "id"}, `#${message.id}`),
       marks(channel, message)),
    ...content(message));
  return node;
}
