// One stream: its events by version, paged; the newest page follows new events live (SSE) unless
// paused; the latest snapshot; and a confirmed delete (the server allows it to sys_admin only).

import { ApiError, del, enc, getJson } from "./api.js";
import { h, href, mount, pretty, time } from "./dom.js";
import { eventRow, liveTail } from "./events_common.js";

const PAGE_SIZE = 20;

export function streamView({ main, params, report }, streamId) {
  const base = `/api/v1/streams/${enc(streamId)}`;
  const list = h("div", { class: "events", id: "events" });
  const pager = h("div", { class: "pager" });
  const heading = h("p", { class: "muted" });
  const snapshot = h("section", { class: "snapshot" }, h("h2", {}, "Latest snapshot"), h("p", { class: "muted" }, "…"));
  const controls = h("div", { class: "controls" });
  mount(main,
    h("p", {}, h("a", { href: "#/streams" }, "« streams")),
    h("h1", {}, "Stream ", h("code", {}, streamId)),
    heading, controls, list, pager, snapshot, deleteSection(streamId, base, report));

  let alive = true;
  let lastVersion = 0;
  let shown = 0;

  const tail = liveTail(`${base}/subscribe`, () => ({ after_version: lastVersion }), (e) => {
    if (e.version <= lastVersion) return;
    lastVersion = e.version;
    shown += 1;
    list.append(eventRow(e, { showStream: false }));
    heading.textContent = `version ${e.version} · live`;
  });

  (async () => {
    // The newest page unless one is asked for: page k holds versions (k-1)*size+1 .. k*size.
    const probe = await getJson(`${base}/events`, { page_size: 1 });
    const last = Math.max(1, Math.ceil(probe.current_version / PAGE_SIZE));
    const asked = Number.parseInt(params.get("page") || "0", 10);
    const page = asked >= 1 ? Math.min(asked, last) : last;
    const first = await getJson(`${base}/events`, { page, page_size: PAGE_SIZE });
    if (!alive) return;
    for (const e of first.events) list.append(eventRow(e, { showStream: false }));
    shown = first.events.length;
    lastVersion = first.events.length ? first.events[first.events.length - 1].version : 0;
    heading.textContent = `version ${first.current_version} · ${first.pagination.total_count} events · ` +
      `page ${page} of ${last}`;
    mount(pager,
      page > 1 ? h("a", { href: href(`/stream/${enc(streamId)}`, { page: 1 }) }, "« oldest") : null,
      page > 1 ? h("a", { href: href(`/stream/${enc(streamId)}`, { page: page - 1 }), rel: "prev" }, "‹ older") : null,
      page < last ? h("a", { href: href(`/stream/${enc(streamId)}`, { page: page + 1 }), rel: "next" }, "newer ›") : null,
      page < last ? h("a", { href: href(`/stream/${enc(streamId)}`) }, "newest »") : null);
    tail.show(controls, page === last);
  })().catch((err) => {
    if (err instanceof ApiError && err.code === "SYS_EVSTORE_STREAM_NOT_FOUND") {
      mount(list, h("p", { class: "muted" }, "This stream does not exist (or was deleted)."));
      return;
    }
    report(err);
  });

  getJson(`${base}/snapshots/latest`)
    .then((s) => {
      if (!alive) return;
      mount(snapshot, h("h2", {}, "Latest snapshot"),
        h("p", {}, `version ${s.snapshot_version} · ${s.aggregate_type} · `, time(s.created_at)), pretty(s.state));
    })
    .catch((err) => {
      if (!alive) return;
      const text = err instanceof ApiError && err.status === 404 ? "No snapshot." : err.explain ? err.explain() : String(err);
      mount(snapshot, h("h2", {}, "Latest snapshot"), h("p", { class: "muted" }, text));
    });

  return () => {
    alive = false;
    tail.stop();
  };
}

function deleteSection(streamId, base, report) {
  const confirmInput = h("input", { type: "text", id: "confirm-delete", spellcheck: "false",
    placeholder: "type the stream id to confirm", autocomplete: "off" });
  const button = h("button", { type: "submit", class: "danger", disabled: true }, "Delete stream");
  const result = h("span", { class: "muted" });
  confirmInput.addEventListener("input", () => {
    button.disabled = confirmInput.value !== streamId;
  });
  const form = h("form", { class: "delete" }, confirmInput, " ", button, " ", result);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (confirmInput.value !== streamId) return;
    button.disabled = true;
    try {
      const answer = await del(base);
      mount(result, `deleted (${answer.deleted_events} events)`);
      window.location.hash = "#/streams";
    } catch (err) {
      report(err);
      button.disabled = false;
    }
  });
  return h("details", { class: "danger-zone" },
    h("summary", {}, "Delete this stream (sys_admin only)"),
    h("p", {}, "Deletes the stream, all its events and its snapshots. This cannot be undone."),
    form);
}
