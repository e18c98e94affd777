// Streams: newest activity first, filtered by id prefix, paged with the API's cursor.

import { getJson } from "./api.js";
import { h, href, mount, time } from "./dom.js";

const LIMIT = 50;

export function streamsView({ main, params, report }) {
  const prefix = params.get("prefix") || "";
  const after = params.get("after") || "";
  const input = h("input", { type: "search", name: "prefix", id: "prefix", value: prefix,
    placeholder: "stream id prefix, e.g. order-", spellcheck: "false" });
  const form = h("form", { class: "filters" }, h("label", { for: "prefix" }, "Prefix "), input,
    h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    window.location.hash = href("/streams", { prefix: input.value.trim() });
  });
  const body = h("tbody", {});
  const pager = h("div", { class: "pager" });
  mount(main, h("h1", {}, "Streams"), form,
    h("table", { class: "streams" },
      h("thead", {}, h("tr", {}, h("th", {}, "stream"), h("th", {}, "aggregate type"),
        h("th", { class: "num" }, "version"), h("th", {}, "last append"))),
      body),
    pager);

  let alive = true;
  getJson("/api/v1/streams", { prefix, after, limit: LIMIT })
    .then((page) => {
      if (!alive) return;
      if (!page.streams.length) {
        body.append(h("tr", {}, h("td", { colspan: 4, class: "muted" },
          prefix ? `No stream id starts with “${prefix}”.` : "No streams yet.")));
      }
      for (const s of page.streams) {
        body.append(h("tr", { dataset: { stream: s.stream_id } },
          h("td", {}, h("a", { href: href(`/stream/${encodeURIComponent(s.stream_id)}`) }, s.stream_id)),
          h("td", {}, s.aggregate_type),
          h("td", { class: "num" }, s.current_version),
          h("td", {}, time(s.updated_at))));
      }
      mount(pager,
        after ? h("a", { href: href("/streams", { prefix }) }, "« first page") : null,
        page.next_after ? h("a", { href: href("/streams", { prefix, after: page.next_after }), rel: "next" },
          "next page »") : null);
    })
    .catch(report);
  return () => {
    alive = false;
  };
}
