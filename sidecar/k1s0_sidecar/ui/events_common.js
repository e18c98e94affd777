// One event as an expandable row: the summary line, then payload and metadata pretty-printed.

import { h, href, pretty, time } from "./dom.js";

export function eventRow(e, { showStream = true } = {}) {
  return h(
    "details",
    { class: "event", dataset: { sequence: e.sequence, version: e.version, stream: e.stream_id } },
    h(
      "summary",
      {},
      h("span", { class: "seq", title: "global sequence" }, `#${e.sequence}`),
      showStream ? h("a", { class: "stream", href: href(`/stream/${encodeURIComponent(e.stream_id)}`) }, e.stream_id) : null,
      h("span", { class: "ver", title: "version in its stream" }, `v${e.version}`),
      h("span", { class: "type" }, e.event_type),
      time(e.occurred_at),
    ),
    h(
      "div",
      { class: "body" },
      h("h4", {}, "payload"),
      pretty(e.payload),
      h("h4", {}, "metadata"),
      pretty(e.metadata),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "event_id"), h("dd", {}, e.event_id),
        h("dt", {}, "occurred_at"), h("dd", {}, e.occurred_at),
        h("dt", {}, "stored_at"), h("dd", {}, e.stored_at),
      ),
    ),
  );
}

/** The live-follow switch: a checkbox and a state line. */
export function followToggle(initial, onChange) {
  const box = h("input", { type: "checkbox", id: "follow", checked: initial });
  const state = h("span", { class: "follow-state muted", id: "follow-state" }, initial ? "connecting…" : "paused");
  box.addEventListener("change", () => onChange(box.checked));
  return {
    element: h("label", { class: "follow" }, box, " live follow ", state),
    setState(text) {
      state.textContent = text;
      state.classList.toggle("live", text === "live");
    },
    set(checked) {
      box.checked = checked;
    },
  };
}
