// One event as an expandable row: the summary line, then payload and metadata pretty-printed.

import { follow } from "./api.js";
import { h, href, mount, pretty, time } from "./dom.js";

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

/**
 * The live tail of a list's newest page: a follow switch that (re)opens the SSE follow of `path`
 * from `params()` (the position the view has reached) and hands each event to `onEvent`; paused,
 * the follow is aborted. `stop` also ends it when the view goes away.
 */
export function liveTail(path, params, onEvent) {
  let live = null; // AbortController of the running follow
  const toggle = followToggle(true, (on) => (on ? start() : stop()));
  function stop() {
    if (live) live.abort();
    live = null;
    toggle.setState("paused");
  }
  function start() {
    stop();
    live = new AbortController();
    toggle.setState("connecting…");
    follow(path, params(), { signal: live.signal, onState: (s) => toggle.setState(s), onEvent });
  }
  return {
    stop,
    /** On the newest page: the switch, following; elsewhere a note that it only runs there. */
    show(controls, newest) {
      if (newest) {
        mount(controls, toggle.element);
        start();
      } else {
        mount(controls, h("span", { class: "muted" }, "Live follow runs on the newest page."));
      }
    },
  };
}
