// The signing identity form: a name and a key file, read in this page only (WebCrypto,
// non-extractable; never stored, never sent). Compose and the security view share it.

import {el, fill} from "./dom.js";
import {Signer, unavailable, ed25519Supported} from "./signing.js";
import {state, agents} from "./state.js";

let counter = 0;

/** A form that loads state.signer; `changed()` is called once one is loaded or forgotten.
 *  `role` ("operator" or "") is what the name must be in the directory. */
export function identityForm(purpose, changed, role = "") {
  const n = ++counter;
  const form = el("form", {class: "identity", "aria-label": purpose});
  const status = el("p", {class: "identity-status", role: "status"});

  function loaded() {
    fill(form,
         el("p", {}, "Signing as ", el("strong", {}, state.signer.name),
            " (the key stays in this page)."),
         el("button", {type: "button", class: "quiet", onclick: () => {
           state.signer = null;
           render();
           changed();
         }}, "Forget the key"));
  }

  async function render() {
    if (state.signer && (!role || await hasRole(state.signer.name, role))) {
      loaded();
      return;
    }
    const why = unavailable() || (!(await ed25519Supported()) ? "this browser has no Ed25519" : "");
    if (why) {
      fill(form, el("p", {class: "off"}, `${purpose} is off: ${why}.`));
      return;
    }
    const name = el("input", {id: `signer-name-${n}`, required: true, autocomplete: "username",
                              value: state.signer?.name || ""});
    const file = el("input", {id: `signer-file-${n}`, type: "file", required: true,
                              accept: ".key,.pem,text/plain"});
    fill(form,
         el("p", {}, purpose),
         el("div", {class: "fields"},
            el("div", {}, el("label", {for: name.id}, role ? "Operator name" : "Agent name"), name),
            el("div", {}, el("label", {for: file.id}, "Private key file"), file)),
         status,
         el("button", {type: "submit"}, "Use this key"));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = form.querySelector("input:not([type=file])").value.trim();
    const file = form.querySelector("input[type=file]").files[0];
    status.textContent = "";
    try {
      const signer = await Signer.fromFile(name, file);
      const entry = (await agents(true)).get(name);
      if (!entry) throw new Error(`${name} is not in the directory`);
      if (role && entry.role !== role) throw new Error(`${name} is not an ${role}`);
      if (!(await signer.matches(entry.public_key))) {
        throw new Error(`that key is not the one registered for ${name}`);
      }
      state.signer = signer;
      loaded();
      changed();
    } catch (error) {
      status.textContent = error.message;
      status.className = "identity-status error";
    }
  });
  render();
  return form;
}

async function hasRole(name, role) {
  try {
    return (await agents()).get(name)?.role === role;
  } catch (_) {
    return false;
  }
}
