// The console's shell: the hash router, the token form and the error banner. Each view renders
// into <main> and returns a function that stops what it started (live follows, timers).

import { ApiError, setToken, token } from "./api.js";
import { mount } from "./dom.js";
import { eventsView } from "./events.js";
import { statusView } from "./status.js";
import { streamView } from "./stream.js";
import { streamsView } from "./streams.js";

const main = document.getElementById("main");
const banner = document.getElementById("banner");
let stopView = () => {};

/** Show an error (an ApiError explains itself) or clear the banner with null. */
export function report(err) {
  if (!err) {
    banner.hidden = true;
    banner.replaceChildren();
    return;
  }
  const text = err instanceof ApiError ? err.explain() : `error: ${err.message || err}`;
  banner.className = err instanceof ApiError && (err.status === 401 || err.status === 403) ? "auth" : "error";
  mount(banner, text);
  banner.hidden = false;
}

function route() {
  const raw = window.location.hash.replace(/^#/, "") || "/streams";
  const [path, query] = raw.split("?", 2);
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  stopView();
  report(null);
  mount(main);
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.nav === (parts[0] === "stream" ? "streams" : parts[0]));
  }
  const ctx = { main, params, report };
  try {
    if (parts[0] === "stream" && parts.length >= 2) {
      stopView = streamView(ctx, decodeURIComponent(parts.slice(1).join("/")));
    } else if (parts[0] === "events") {
      stopView = eventsView(ctx);
    } else if (parts[0] === "status") {
      stopView = statusView(ctx);
    } else {
      stopView = streamsView(ctx);
    }
  } catch (err) {
    report(err);
    stopView = () => {};
  }
}

function showTokenState() {
  document.getElementById("token-state").textContent = token() ? "token set (this tab only)" : "no token";
}

document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = document.getElementById("token");
  setToken(input.value.trim().replace(/^Bearer\s+/i, ""));
  input.value = "";
  showTokenState();
  route();
});
document.getElementById("token-clear").addEventListener("click", () => {
  setToken("");
  showTokenState();
  route();
});
window.addEventListener("hashchange", route);
showTokenState();
route();
