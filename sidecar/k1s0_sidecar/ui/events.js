// All events: the global log by sequence, filtered by event type and stream prefix, with a jump
// to a sequence; the newest page follows new events live (SSE) unless paused.

import { getJson } from "./api.js";
import { h, href, mount } from "./dom.js";
import { eventRow, liveTail } from "./events_common.js";

const LIMIT = 50;

export function eventsView({ main, params, report }) {
  const type = params.get("type") || "";
  const prefix = params.get("prefix") || "";
  const fromParam = params.get("from");
  const typeInput = h("input", { type: "search", id: "event-type", value: type, placeholder: "event type", spellcheck: "false" });
  const prefixInput = h("input", { type: "search", id: "stream-prefix", value: prefix, placeholder: "stream id prefix", spellcheck: "false" });
  const jumpInput = h("input", { type: "number", id: "jump", min: 1, value: fromParam || "", placeholder: "sequence" });
  const filters = h("form", { class: "filters" },
    h("label", { for: "event-type" }, "Type "), typeInput, " ",
    h("label", { for: "stream-prefix" }, "Stream prefix "), prefixInput, " ",
    h("label", { for: "jump" }, "From sequence "), jumpInput, " ",
    h("button", { type: "submit" }, "Show"));
  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    window.location.hash = href("/events", { type: typeInput.value.trim(), prefix: prefixInput.value.trim(),
      from: jumpInput.value.trim() });
  });
  const list = h("div", { class: "events", id: "events" });
  const pager = h("div", { class: "pager" });
  const heading = h("p", { class: "muted" });
  const controls = h("div", { class: "controls" });
  mount(main, h("h1", {}, "All events"), filters, heading, controls, list, pager);

  const filter = { event_type: type ? [type] : [], stream_prefix: prefix ? [prefix] : [] };
  let alive = true;
  let lastSequence = 0;
  const tail = liveTail("/api/v1/subscribe", () => ({ after_sequence: lastSequence, ...filter }), (e) => {
    if (e.sequence <= lastSequence) return;
    lastSequence = e.sequence;
    list.append(eventRow(e));
  });

  (async () => {
    const head = (await getJson("/api/v1/events", { after_sequence: 0, limit: 1 })).head_sequence;
    // Without a jump: the last LIMIT sequences (fewer events when filters hide some).
    const from = Number.parseInt(fromParam || "0", 10);
    const after = from >= 1 ? from - 1 : Math.max(0, head - LIMIT);
    const page = await getJson("/api/v1/events", { after_sequence: after, limit: LIMIT, ...filter });
    if (!alive) return;
    for (const e of page.events) list.append(eventRow(e));
    lastSequence = page.events.length ? page.events[page.events.length - 1].sequence : after;
    const newest = page.events.length < LIMIT;
    heading.textContent = `head sequence ${page.head_sequence} · showing ${page.events.length} events after #${after}`;
    if (!page.events.length) list.append(h("p", { class: "muted", id: "no-events" }, "No events here."));
    const keep = { type, prefix };
    mount(pager,
      after > 0 ? h("a", { href: href("/events", { ...keep, from: 1 }) }, "« first") : null,
      after > 0 ? h("a", { href: href("/events", { ...keep, from: Math.max(1, after - LIMIT + 1) }), rel: "prev" }, "‹ earlier") : null,
      !newest ? h("a", { href: href("/events", { ...keep, from: lastSequence + 1 }), rel: "next" }, "later ›") : null,
      !newest || from ? h("a", { href: href("/events", keep) }, "newest »") : null);
    tail.show(controls, newest);
  })().catch(report);

  return () => {
    alive = false;
    tail.stop();
  };
}
