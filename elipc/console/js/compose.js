// Writing to the open channel: as a named sender in open mode; in secure mode signed in the
// page with the key file the person picked (signing.js); or a sentence saying why not.

import * as api from "./api.js";
import {el, fill} from "./dom.js";
import {state, secureMode, reserved, subscribe} from "./state.js";
import {identityForm} from "./identity.js";

const SENDER_SLOT = "elipc.sender";

function off(section, why) {
  fill(section, el("h2", {class: "visually-hidden"}, "Write a message"),
       el("p", {class: "off", "data-compose": "off"}, `Compose is off: ${why}`));
}

function editor(section, channel, secure) {
  const sender = el("input", {id: "compose-sender", required: true, autocomplete: "nickname",
                              value: sessionStorage.getItem(SENDER_SLOT) || "console"});
  const text = el("textarea", {id: "compose-text", rows: 2, required: true,
                               placeholder: `Message to ${channel}`});
  const status = el("p", {class: "compose-status", role: "status"});
  const send = el("button", {type: "submit"}, "Send");
  const form = el("form", {class: secure ? "compose-form signed" : "compose-form",
                           "aria-label": `Write to ${channel}`},
    secure ? null : el("div", {class: "sender-field"},
                        el("label", {for: sender.id}, "Send as"), sender),
    el("div", {class: "text-field"},
       el("label", {for: text.id}, secure ? `Message (signed as ${state.signer.name})`
                                          : "Message"), text),
    el("div", {class: "compose-actions"}, send,
       el("span", {class: "hint"}, el("kbd", {}, "Ctrl"), "+", el("kbd", {}, "Enter"))),
    status);
  text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!text.value) return;
    send.disabled = true;
    status.className = "compose-status";
    try {
      let body;
      if (secure) body = await state.signer.sendBody(channel, text.value);
      else {
        sessionStorage.setItem(SENDER_SLOT, sender.value);
        body = {channel, sender: sender.value, content: text.value};
      }
      const answer = await api.post("/send", body);
      text.value = "";
      status.textContent = `Sent (#${answer.id}).`;
    } catch (error) {
      status.textContent = `Not sent: ${error.message}`;
      status.className = "compose-status error";
    } finally {
      send.disabled = false;
    }
  });
  return form;
}

function render(section, channel) {
  if (reserved(channel)) {
    off(section, "elipc/ channels are written by the server itself.");
    return;
  }
  if (!state.health) {
    fill(section);
    return;
  }
  const secure = secureMode();
  fill(section, el("h2", {class: "visually-hidden"}, "Write a message"));
  if (secure && !state.signer) {
    section.append(identityForm(
      "In secure mode every message is signed: pick your agent's key file.",
      () => render(section, channel)));
    return;
  }
  if (secure) {
    section.append(identityForm("", () => render(section, channel)));
  }
  section.append(editor(section, channel, secure));
}

/** Fill `section` with the compose form for `channel`; returns a function that stops it. */
export function mountCompose(section, channel) {
  let secure = null;
  render(section, channel);
  secure = state.health ? secureMode() : null;
  return subscribe((kind) => {
    if (kind === "health" && state.health && secureMode() !== secure) {
      secure = secureMode();
      render(section, channel);
    }
  });
}

/** Focus the message field, if there is one. */
export function focusCompose() {
  document.getElementById("compose-text")?.focus();
}
