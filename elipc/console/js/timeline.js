// A channel's messages in a scrolling window: the newest page first, older pages as the
// person scrolls back, newer ones again as they scroll down, never more than MAX_SHOWN
// messages in the page (so 100,000 scroll as well as 100); live messages appended while
// the window reaches the newest.

import * as api from "./api.js";
import {fill} from "./dom.js";
import {messageNode} from "./message.js";

const PAGE = 100;
const MAX_SHOWN = 600;
const EDGE_PX = 400;
const NEWEST = "9223372036854775807";

export class Timeline {
  constructor(channel, scroller, list, status, jump) {
    Object.assign(this, {channel, scroller, list, status, jump});
    this.firstId = null;     // the oldest message shown
    this.lastId = null;      // the newest message shown
    this.hasOlder = false;   // older messages exist above the window
    this.hasNewer = false;   // newer messages exist below it (not live while so)
    this.unseen = 0;         // live messages that arrived out of sight
    this.loading = false;
    scroller.addEventListener("scroll", () => this.onScroll(), {passive: true});
    jump.addEventListener("click", () => this.jumpToLatest());
  }

  history(params) {
    return api.get("/history", {channel: this.channel, limit: PAGE, ...params}, {page: true});
  }

  nearBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 40;
  }

  /** Show the newest page, scrolled to the bottom. */
  async showLatest() {
    const page = await this.history({before_id: NEWEST});
    this.reset(page.items, page.more, false);
    this.scroller.scrollTop = this.scroller.scrollHeight;
    await this.fillUp();
  }

  /** Show the messages around `id` (a search result), with it in view and marked. */
  async showAround(id) {
    const [before, after] = await Promise.all([
      this.history({before_id: id + 1, limit: PAGE / 2}),
      this.history({after_id: id, limit: PAGE / 2}),
    ]);
    this.reset([...before.items, ...after.items], before.more, after.more);
    const target = this.list.querySelector(`[data-id="${id}"]`);
    if (target) {
      target.classList.add("anchor");
      target.scrollIntoView({block: "center"});
      target.focus({preventScroll: true});
    }
  }

  reset(messages, hasOlder, hasNewer) {
    fill(this.list, messages.map((m) => messageNode(this.channel, m)));
    this.firstId = messages.length ? messages[0].id : null;
    this.lastId = messages.length ? messages[messages.length - 1].id : null;
    this.hasOlder = hasOlder;
    this.hasNewer = hasNewer;
    this.unseen = 0;
    this.render();
  }

  /** A message from the live stream. */
  live(message) {
    if (this.hasNewer) {
      this.unseen += 1;
    } else if (this.lastId === null || message.id > this.lastId) {
      const follow = this.nearBottom();
      this.list.append(messageNode(this.channel, message));
      this.lastId = message.id;
      if (this.firstId === null) this.firstId = message.id;
      this.trim("top");
      if (follow) this.scroller.scrollTop = this.scroller.scrollHeight;
      else this.unseen += 1;  // (screen readers hear it through the list's role=log)
    }
    this.render();
  }

  async onScroll() {
    if (this.nearBottom() && !this.hasNewer && this.unseen) {
      this.unseen = 0;
      this.render();
    }
    if (this.loading) return;
    const s = this.scroller;
    if (this.hasOlder && s.scrollTop < EDGE_PX) await this.load(() => this.older());
    else if (this.hasNewer && s.scrollHeight - s.scrollTop - s.clientHeight < EDGE_PX) {
      await this.load(() => this.newer());
    }
  }

  async load(step) {
    this.loading = true;
    this.render();
    try {
      await step();
    } catch (error) {
      this.status.textContent = `Could not load messages: ${error.message}`;
    } finally {
      this.loading = false;
      this.render();
    }
  }

  async older() {
    const page = await this.history({before_id: this.firstId});
    const from = this.scroller.scrollHeight - this.scroller.scrollTop;
    this.list.setAttribute("aria-busy", "true");
    this.list.prepend(...page.items.map((m) => messageNode(this.channel, m)));
    this.list.removeAttribute("aria-busy");
    if (page.items.length) this.firstId = page.items[0].id;
    this.hasOlder = page.more;
    this.scroller.scrollTop = this.scroller.scrollHeight - from;
    this.trim("bottom");
  }

  async newer() {
    const page = await this.history({after_id: this.lastId});
    this.list.append(...page.items.map((m) => messageNode(this.channel, m)));
    if (page.items.length) this.lastId = page.items[page.items.length - 1].id;
    this.hasNewer = page.more;
    this.trim("top");
  }

  /** Keep at most MAX_SHOWN messages, dropping them from `end`. */
  trim(end) {
    const extra = this.list.children.length - MAX_SHOWN;
    if (extra <= 0) return;
    if (end === "top") {
      const height = this.scroller.scrollHeight;
      for (let i = 0; i < extra; i++) this.list.firstElementChild.remove();
      this.scroller.scrollTop -= height - this.scroller.scrollHeight;
      this.firstId = Number(this.list.firstElementChild.dataset.id);
      this.hasOlder = true;
    } else {
      for (let i = 0; i < extra; i++) this.list.lastElementChild.remove();
      this.lastId = Number(this.list.lastElementChild.dataset.id);
      this.hasNewer = true;
    }
  }

  /** Load older pages while they do not fill the window (nothing to scroll yet). */
  async fillUp() {
    while (this.hasOlder && this.scroller.scrollHeight <= this.scroller.clientHeight) {
      await this.older();
    }
  }

  async jumpToLatest() {
    await this.showLatest();
    this.scroller.focus();
  }

  render() {
    let text = "";
    if (this.loading) text = "Loading…";
    else if (this.firstId === null) text = "No messages yet. They appear here as they are sent.";
    else if (!this.hasOlder) text = "The beginning of the channel.";
    this.status.textContent = text;
    const showJump = this.hasNewer || this.unseen > 0;
    this.jump.hidden = !showJump;
    this.jump.textContent = this.unseen
      ? `${this.unseen} new message${this.unseen === 1 ? "" : "s"}: jump to the latest`
      : "Jump to the latest";
  }
}
