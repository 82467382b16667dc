/* <notifier-inbox>: the member's inbox as a custom element. Plain JavaScript, shadow DOM, no
 * dependencies, no build step. Paste into a page (docs/inbox.md):
 *
 *   <script src="https://notifier.example.org/static/inbox.js" defer></script>
 *   <notifier-inbox api="https://notifier.example.org" token="MEMBER-TOKEN"></notifier-inbox>
 *
 * Attributes: api (where notifier answers), token (a member token), locale and time-zone
 * (default: the page's language and the member's time zone from their preferences). The locale
 * also picks the component's words: English, German, French or Spanish (else English).
 * Events it dispatches: notifier-inbox-unauthorized (the token expired: set a new one).
 * Theming: the CSS custom properties --notifier-inbox-* listed in STYLE below.
 */
(() => {
  "use strict";
  if (customElements.get("notifier-inbox")) return;

  const PAGE = 20;
  // The component's words by language, written in by the server from notifier's gettext
  // catalogues (msgid -> text; docs/i18n.md). A message missing here reads English.
  const CATALOGUES = {} /* notifier:catalogues */;
  const catalogueFor = (tag) => CATALOGUES[String(tag || "").toLowerCase().split(/[-_]/)[0]] || {};
  // Marks the English words for extraction; `this.gettext` translates them.
  const N_ = (message) => message;
  const VIEWS = [["unread", N_("Unread")], ["all", N_("All")], ["archived", N_("Archived")]];
  const STYLE = `
    :host { --_accent: var(--notifier-inbox-accent, #1d4ed8); --_accent-fg: var(--notifier-inbox-accent-fg, #ffffff);
      --_bg: var(--notifier-inbox-bg, #ffffff); --_fg: var(--notifier-inbox-fg, #111827);
      --_muted: var(--notifier-inbox-muted, #4b5563); --_border: var(--notifier-inbox-border, #d1d5db);
      --_unread: var(--notifier-inbox-unread-bg, #eff6ff); --_badge: var(--notifier-inbox-badge, #b91c1c);
      --_radius: var(--notifier-inbox-radius, 8px); --_focus: var(--notifier-inbox-focus, #b45309);
      display: inline-block; position: relative; font: var(--notifier-inbox-font, 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif);
      color: var(--_fg); }
    @media (prefers-color-scheme: dark) {
      :host { --_accent: var(--notifier-inbox-accent-dark, #93c5fd); --_accent-fg: var(--notifier-inbox-accent-fg-dark, #111827);
        --_bg: var(--notifier-inbox-bg-dark, #111827); --_fg: var(--notifier-inbox-fg-dark, #f9fafb);
        --_muted: var(--notifier-inbox-muted-dark, #d1d5db); --_border: var(--notifier-inbox-border-dark, #374151);
        --_unread: var(--notifier-inbox-unread-bg-dark, #1e293b); --_badge: var(--notifier-inbox-badge-dark, #f87171);
        --_focus: var(--notifier-inbox-focus-dark, #fbbf24); }
    }
    * { box-sizing: border-box; }
    [hidden] { display: none !important; }
    button { font: inherit; color: inherit; cursor: pointer; }
    :focus-visible { outline: 3px solid var(--_focus); outline-offset: 2px; }
    .bell { position: relative; display: inline-flex; align-items: center; justify-content: center; width: 2.75rem; height: 2.75rem;
      border: 1px solid var(--_border); border-radius: 50%; background: var(--_bg); color: var(--_fg); padding: 0; }
    .bell svg { width: 1.4rem; height: 1.4rem; }
    .badge { position: absolute; top: -.3rem; right: -.3rem; min-width: 1.35rem; height: 1.35rem; padding: 0 .3rem; border-radius: 999px;
      background: var(--_badge); color: #ffffff; font-size: .75rem; font-weight: 700; line-height: 1.35rem; text-align: center; }
    @media (prefers-color-scheme: dark) { .badge { color: #111827; } }
    .badge[hidden] { display: none; }
    .sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); clip-path: inset(50%); white-space: nowrap; }
    .panel { position: absolute; right: 0; top: calc(100% + .4rem); z-index: 1000; width: min(26rem, calc(100vw - 1rem));
      max-height: min(36rem, 80vh); display: flex; flex-direction: column; background: var(--_bg); color: var(--_fg);
      border: 1px solid var(--_border); border-radius: var(--_radius); box-shadow: 0 10px 30px rgba(0,0,0,.2); overflow: hidden; }
    .panel[hidden] { display: none; }
    @media (max-width: 480px) { .panel { position: fixed; left: .5rem; right: .5rem; top: 4rem; width: auto; max-height: calc(100vh - 5rem); } }
    .head { display: flex; align-items: center; gap: .5rem; padding: .6rem .75rem; border-bottom: 1px solid var(--_border); flex-wrap: wrap; }
    h2 { font-size: 1.05rem; margin: 0; flex: 1; }
    .link { background: none; border: 0; color: var(--_accent); text-decoration: underline; padding: .25rem; }
    .close { background: none; border: 1px solid var(--_border); border-radius: 6px; width: 2rem; height: 2rem; padding: 0; }
    .bar { display: flex; flex-wrap: wrap; gap: .35rem; padding: .5rem .75rem 0; }
    .chip { border: 1px solid var(--_border); background: var(--_bg); border-radius: 999px; padding: .2rem .65rem; font-size: .88rem; }
    .chip[aria-pressed="true"] { background: var(--_accent); border-color: var(--_accent); color: var(--_accent-fg); }
    .scroll { overflow-y: auto; padding: .5rem 0; flex: 1; }
    ul { list-style: none; margin: 0; padding: 0; }
    li { padding: .6rem .75rem; border-top: 1px solid var(--_border); }
    li:first-child { border-top: 0; }
    li.unread { background: var(--_unread); }
    h3 { font-size: .98rem; margin: 0 0 .15rem; overflow-wrap: anywhere; }
    li.unread h3 { font-weight: 800; }
    h3 a { color: var(--_accent); }
    .meta { color: var(--_muted); font-size: .82rem; margin: 0 0 .25rem; }
    .body { margin: 0 0 .35rem; overflow-wrap: anywhere; white-space: pre-line; }
    .actions { display: flex; gap: .35rem; flex-wrap: wrap; }
    .actions button, .more { border: 1px solid var(--_border); background: var(--_bg); border-radius: 6px; padding: .2rem .6rem; font-size: .85rem; }
    .empty { padding: 1.5rem .75rem; text-align: center; color: var(--_muted); margin: 0; }
    .more { display: block; margin: .5rem auto; }
    .problem { color: var(--_badge); padding: .5rem .75rem; margin: 0; }
  `;
  const BELL = '<svg viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path fill="currentColor" d="M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22Zm7-6V11a7 7 0 0 0-5.5-6.84V3.5a1.5 1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-2 2v1h18v-1l-2-2Z"/></svg>';

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function safeUrl(url) {
    try {
      const parsed = new URL(url);
      return parsed.protocol === "https:" || parsed.protocol === "http:" ? parsed.href : null;
    } catch (e) {
      return null;
    }
  }

  class NotifierInbox extends HTMLElement {
    static get observedAttributes() { return ["token", "api"]; }

    constructor() {
      super();
      this.state = { view: "unread", category: null, items: [], cursor: null, counts: { unread: 0, unseen: 0, by_category: {} }, loaded: false };
      this.lastEventId = null;
      this.source = null;
      this.timeZone = undefined;
      const root = this.attachShadow({ mode: "open" });
      root.innerHTML = `<style>${STYLE}</style>`;
      this.bell = el("button", { class: "bell", type: "button", "aria-expanded": "false", "aria-controls": "panel", "aria-haspopup": "dialog", onclick: () => this.toggle() });
      this.bell.innerHTML = BELL;
      this.badge = el("span", { class: "badge", "aria-hidden": "true", hidden: true });
      this.bell.append(this.badge);
      this.live = el("div", { class: "sr", role: "status", "aria-live": "polite", "aria-atomic": "true" });
      this.strings = {};
      this.heading = el("h2", { id: "title" });
      this.markAll = el("button", { class: "link", type: "button", onclick: () => this.readAll() });
      this.closeButton = el("button", { class: "close", type: "button", text: "×", onclick: () => this.close(true) });
      this.views = el("div", { class: "bar", role: "group" });
      this.categories = el("div", { class: "bar", role: "group" });
      this.list = el("ul", { "aria-labelledby": "title" });
      this.empty = el("p", { class: "empty", hidden: true });
      this.problem = el("p", { class: "problem", role: "alert", hidden: true });
      this.more = el("button", { class: "more", type: "button", hidden: true, onclick: () => this.load(true) });
      this.panel = el("section", { id: "panel", class: "panel", role: "dialog", "aria-labelledby": "title", hidden: true },
        el("div", { class: "head" }, this.heading, this.markAll, this.closeButton), this.views, this.categories,
        el("div", { class: "scroll" }, this.problem, this.list, this.empty, this.more));
      this.panel.addEventListener("keydown", (e) => { if (e.key === "Escape") { e.stopPropagation(); this.close(true); } });
      root.append(this.bell, this.live, this.panel);
      this.onDocumentClick = (e) => { if (!e.composedPath().includes(this)) this.close(false); };
      // Escape closes the open panel wherever focus is (also after the focused button went away).
      this.onDocumentKey = (e) => { if (e.key === "Escape" && !this.panel.hidden) this.close(true); };
    }

    connectedCallback() {
      this.locale = this.getAttribute("locale") || (this.closest("[lang]") || document.documentElement).lang || navigator.language || "en";
      this.timeZone = this.getAttribute("time-zone") || undefined;
      this.strings = catalogueFor(this.locale);
      this.heading.textContent = this.gettext("Notifications");
      this.markAll.textContent = this.gettext("Mark all as read");
      this.closeButton.setAttribute("aria-label", this.gettext("Close notifications"));
      this.views.setAttribute("aria-label", this.gettext("Show"));
      this.categories.setAttribute("aria-label", this.gettext("Category"));
      this.more.textContent = this.gettext("Load more");
      this.renderViews();
      this.updateBadge();
      document.addEventListener("click", this.onDocumentClick);
      document.addEventListener("keydown", this.onDocumentKey);
      this.ticker = setInterval(() => this.refreshTimes(), 60000);
      this.start();
    }

    /** `message` in the component's language, `%(name)s` filled from `values`. */
    gettext(message, values) {
      const text = this.strings[message] || message;
      return values ? text.replace(/%\((\w+)\)s/g, (_, key) => String(values[key])) : text;
    }

    disconnectedCallback() {
      document.removeEventListener("click", this.onDocumentClick);
      document.removeEventListener("keydown", this.onDocumentKey);
      clearInterval(this.ticker);
      this.stopStream();
    }

    attributeChangedCallback(name, before, after) {
      if (before !== after && this.isConnected && before !== null) this.start();
    }

    get api() { return (this.getAttribute("api") || "").replace(/\/+$/, ""); }

    async start() {
      this.stopStream();
      if (!this.getAttribute("token")) return;
      this.openStream();
      if (!this.getAttribute("time-zone")) {
        const prefs = await this.call("GET", "/member/v1/preferences").catch(() => null);
        if (prefs && prefs.timezone) { this.timeZone = prefs.timezone; this.refreshTimes(); }
      }
      if (!this.panel.hidden) this.load(false);
    }

    async call(method, path) {
      const response = await fetch(this.api + path, { method, headers: { Authorization: `Bearer ${this.getAttribute("token")}` }, credentials: "omit" });
      if (response.status === 401) {
        this.stopStream();
        this.dispatchEvent(new CustomEvent("notifier-inbox-unauthorized", { bubbles: true, composed: true }));
        throw new Error("unauthorized");
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      return response.json();
    }

    openStream() {
      const query = new URLSearchParams({ token: this.getAttribute("token") });
      if (this.lastEventId) query.set("last_event_id", this.lastEventId);
      const source = new EventSource(`${this.api}/member/v1/stream?${query}`);
      this.source = source;
      source.addEventListener("counts", (e) => { this.state.counts = JSON.parse(e.data); this.updateBadge(); this.renderCategories(); });
      source.addEventListener("message", (e) => {
        this.lastEventId = e.lastEventId || this.lastEventId;
        this.arrived(JSON.parse(e.data));
      });
      source.addEventListener("error", () => {
        if (source.readyState === EventSource.CLOSED && this.source === source) {
          // The browser gave up (e.g. the token expired): try again later, from the last id seen.
          this.source = null;
          this.retry = setTimeout(() => this.checkAndReopen(), 5000);
        }
      });
    }

    async checkAndReopen() {
      try { await this.call("GET", "/member/v1/counts"); } catch (e) { return; }
      if (!this.source) this.openStream();
    }

    stopStream() {
      clearTimeout(this.retry);
      if (this.source) { this.source.close(); this.source = null; }
    }

    arrived(item) {
      this.announce(this.gettext("New message: %(subject)s", { subject: item.subject }));
      if (!this.state.loaded || this.state.items.some((m) => m.id === item.id)) return;
      if (this.state.view === "archived" || (this.state.category && item.category !== this.state.category)) return;
      this.state.items.unshift(item);
      this.list.prepend(this.renderItem(item));
      this.empty.hidden = true;
      if (this.loading) this.loading.push(item);  // a page being fetched may predate it
    }

    announce(text) {
      this.live.textContent = "";
      setTimeout(() => { this.live.textContent = text; }, 50);
    }

    updateBadge() {
      const n = this.state.counts.unread || 0;
      this.badge.textContent = n > 99 ? "99+" : String(n);
      this.badge.hidden = n === 0;
      this.bell.setAttribute("aria-label", n === 0 ? this.gettext("Notifications, none unread") : this.gettext("Notifications, %(n)s unread", { n }));
      this.markAll.hidden = n === 0;
    }

    toggle() { if (this.panel.hidden) this.open(); else this.close(true); }

    open() {
      this.panel.hidden = false;
      this.bell.setAttribute("aria-expanded", "true");
      this.load(false);
      if (this.state.counts.unseen) this.call("POST", "/member/v1/seen").catch(() => {});
      this.closeButton.focus();
    }

    close(refocus) {
      if (this.panel.hidden) return;
      this.panel.hidden = true;
      this.bell.setAttribute("aria-expanded", "false");
      if (refocus) this.bell.focus();
    }

    renderViews() {
      this.views.replaceChildren(...VIEWS.map(([key, label]) => el("button", {
        class: "chip", type: "button", "aria-pressed": String(this.state.view === key), text: this.gettext(label),
        onclick: () => { this.state.view = key; this.renderViews(); this.load(false); },
      })));
    }

    renderCategories() {
      const names = new Set(Object.keys(this.state.counts.by_category || {}));
      for (const m of this.state.items) names.add(m.category);
      if (this.state.category) names.add(this.state.category);
      if (names.size < 2 && !this.state.category) { this.categories.replaceChildren(); return; }
      const chip = (name, label) => el("button", {
        class: "chip", type: "button", "aria-pressed": String(this.state.category === name), text: label,
        onclick: () => { this.state.category = name; this.renderCategories(); this.load(false); },
      });
      const unread = this.state.counts.by_category || {};
      this.categories.replaceChildren(chip(null, this.gettext("Every category")),
        ...[...names].sort().map((name) => chip(name, unread[name] ? `${name} (${unread[name]})` : name)));
    }

    async load(more) {
      const params = new URLSearchParams({ limit: String(PAGE) });
      if (this.state.view === "unread") params.set("unread", "true");
      if (this.state.view === "archived") params.set("archived", "true");
      if (this.state.category) params.set("category", this.state.category);
      if (more && this.state.cursor) params.set("cursor", this.state.cursor);
      const request = (this.pending = Symbol("load"));
      const arrivedMeanwhile = (this.loading = []);
      let page;
      try {
        page = await this.call("GET", `/member/v1/messages?${params}`);
        this.problem.hidden = true;
      } catch (e) {
        this.problem.textContent = this.gettext("Your notifications could not be loaded. Try again in a moment.");
        this.problem.hidden = false;
        return;
      }
      if (request !== this.pending) return;
      this.loading = null;
      const focusAfter = more ? this.list.children.length : -1;
      if (!more) {
        // Messages that arrived while the page was on its way stay on top of it.
        const fresh = arrivedMeanwhile.filter((m) => !page.items.some((p) => p.id === m.id));
        page.items.unshift(...fresh.sort((a, b) => b.id - a.id));
        this.state.items = [];
        this.list.replaceChildren();
      }
      this.state.items.push(...page.items);
      this.list.append(...page.items.map((m) => this.renderItem(m)));
      this.state.cursor = page.next_cursor;
      this.state.loaded = true;
      this.more.hidden = !page.next_cursor;
      this.empty.hidden = this.state.items.length > 0;
      this.empty.textContent = { unread: this.gettext("You are all caught up."), all: this.gettext("No notifications yet."), archived: this.gettext("Nothing archived.") }[this.state.view];
      this.renderCategories();
      if (focusAfter >= 0) {
        const next = this.list.children[focusAfter];
        if (next) (next.querySelector("button") || next).focus();
      }
    }

    renderItem(m) {
      const url = m.url && safeUrl(m.url);
      const heading = el("h3", { id: `m-${m.id}` }, url ? el("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: m.subject, onclick: () => { if (!m.read_at) this.act(m.id, "read"); } }) : m.subject);
      const time = el("time", { datetime: m.created_at, title: this.fullTime(m.created_at), text: this.relative(m.created_at) });
      const actions = el("div", { class: "actions" });
      const button = (act, label) => el("button", { type: "button", "data-act": act, "aria-describedby": `m-${m.id}`, text: label, onclick: () => this.act(m.id, act) });
      if (m.archived_at) actions.append(button("unarchive", this.gettext("Move to inbox")));
      else actions.append(m.read_at ? button("unread", this.gettext("Mark as unread")) : button("read", this.gettext("Mark as read")), button("archive", this.gettext("Archive")));
      const unreadLabel = m.read_at ? null : el("span", { class: "sr", text: `${this.gettext("Unread:")} ` });
      if (unreadLabel) heading.prepend(unreadLabel);
      return el("li", { class: m.read_at ? "read" : "unread", "data-id": String(m.id) },
        el("article", { "aria-labelledby": `m-${m.id}` }, heading, el("p", { class: "meta" }, `${m.category} · `, time),
          el("p", { class: "body", text: m.body }), actions));
    }

    async act(id, act) {
      let updated;
      try {
        updated = await this.call("POST", `/member/v1/messages/${id}/${act}`);
      } catch (e) {
        this.announce(this.gettext("That did not work. Try again in a moment."));
        return;
      }
      const index = this.state.items.findIndex((m) => m.id === id);
      const node = this.list.querySelector(`li[data-id="${id}"]`);
      const gone = (act === "archive" && this.state.view !== "archived") || (act === "unarchive" && this.state.view === "archived") ||
        (act === "read" && this.state.view === "unread");
      const focusTarget = node && (gone ? (node.nextElementSibling || node.previousElementSibling) : null);
      if (index >= 0) this.state.items[index] = updated;
      if (node) {
        if (gone) { node.remove(); this.state.items.splice(index, 1); }
        else { const fresh = this.renderItem(updated); node.replaceWith(fresh); (fresh.querySelector(`[data-act]`) || fresh).focus(); }
      }
      if (gone) (focusTarget ? focusTarget.querySelector("button") : this.closeButton).focus();
      this.empty.hidden = this.state.items.length > 0;
      this.announce({ read: this.gettext("Marked as read."), unread: this.gettext("Marked as unread."), archive: this.gettext("Archived."), unarchive: this.gettext("Moved to inbox.") }[act]);
      this.refreshCounts();
    }

    async readAll() {
      try {
        await this.call("POST", `/member/v1/read-all${this.state.category ? `?category=${encodeURIComponent(this.state.category)}` : ""}`);
      } catch (e) {
        this.announce(this.gettext("That did not work. Try again in a moment."));
        return;
      }
      this.closeButton.focus();  // before the button hides itself (nothing unread is left)
      this.announce(this.gettext("Everything is marked as read."));
      await this.refreshCounts();
      await this.load(false);
    }

    async refreshCounts() {
      try { this.state.counts = await this.call("GET", "/member/v1/counts"); } catch (e) { return; }
      this.updateBadge();
      this.renderCategories();
    }

    relative(iso) {
      const seconds = (new Date(iso).getTime() - Date.now()) / 1000;
      const steps = [[60, "second"], [3600, "minute", 60], [86400, "hour", 3600], [604800, "day", 86400], [2629800, "week", 604800], [31557600, "month", 2629800], [Infinity, "year", 31557600]];
      const format = new Intl.RelativeTimeFormat(this.locale, { numeric: "auto" });
      for (const [limit, unit, size] of steps) {
        if (Math.abs(seconds) < limit) return format.format(Math.round(seconds / (size || 1)), unit);
      }
      return "";
    }

    fullTime(iso) {
      try {
        return new Intl.DateTimeFormat(this.locale, { dateStyle: "medium", timeStyle: "short", timeZone: this.timeZone }).format(new Date(iso));
      } catch (e) {
        return new Date(iso).toLocaleString(this.locale);
      }
    }

    refreshTimes() {
      for (const time of this.shadowRoot.querySelectorAll("time")) {
        const iso = time.getAttribute("datetime");
        time.textContent = this.relative(iso);
        time.title = this.fullTime(iso);
      }
    }
  }

  customElements.define("notifier-inbox", NotifierInbox);
})();
