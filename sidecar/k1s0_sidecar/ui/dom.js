// Building the page from untrusted data: every value becomes a text node or an attribute set
// through the DOM API, never parsed as markup.

/** An element: h("a", {href: "#/x", class: "y"}, "text", child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** JSON pretty-printed as text (a <pre>). */
export function pretty(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

/** A hash link: #/path?query. */
export function href(path, params = {}) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") query.set(k, String(v));
  }
  const q = query.toString();
  return `#${path}${q ? "?" + q : ""}`;
}

/** "2026-02-23T10:00:00.012+00:00" in the browser's local time, and the original as a tooltip. */
export function time(text) {
  if (!text) return h("span", { class: "muted" }, "—");
  const d = new Date(text);
  const shown = Number.isNaN(d.getTime()) ? text : d.toLocaleString();
  return h("time", { datetime: text, title: text }, shown);
}
