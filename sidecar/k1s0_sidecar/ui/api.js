// Talking to the sidecar's REST API from the same origin. The token lives in sessionStorage only
// (this tab, until it closes) and goes out as a bearer header; nothing is sent anywhere else.

const TOKEN_KEY = "k1s0.eventstore.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** A failed call: HTTP status, the SYS_EVSTORE_* code, the message and the request id. */
export class ApiError extends Error {
  constructor(status, code, message, requestId) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }

  /** What to tell the person at the screen. */
  explain() {
    if (this.status === 401) {
      return `401 not signed in (${this.code}): ${this.message}. Paste a bearer token above.`;
    }
    if (this.status === 403) {
      return `403 permission denied (${this.code}): ${this.message}`;
    }
    const id = this.requestId ? ` [request ${this.requestId}]` : "";
    return `${this.status || "network"} ${this.code}: ${this.message}${id}`;
  }
}

function headers(extra = {}) {
  const out = { Accept: "application/json", ...extra };
  const t = token();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

async function failure(response) {
  let code = "SYS_EVSTORE_HTTP_" + response.status;
  let message = response.statusText || "request failed";
  let requestId = response.headers.get("X-Request-Id") || "";
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
      requestId = body.error.request_id || requestId;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, code, message, requestId);
}

async function call(method, path, params) {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === "") continue;
    for (const item of Array.isArray(v) ? v : [v]) url.searchParams.append(k, String(item));
  }
  let response;
  try {
    response = await fetch(url, { method, headers: headers(), cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, "SYS_EVSTORE_UNREACHABLE", `the sidecar did not answer (${err.message})`, "");
  }
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getJson(path, params) {
  return (await call("GET", path, params)).json();
}

export async function getText(path, params) {
  return (await call("GET", path, params)).text();
}

export async function del(path) {
  return (await call("DELETE", path)).json();
}

/** GET that answers the JSON body even on an error status (readiness answers 503 with details). */
export async function getJsonAnyStatus(path) {
  const response = await fetch(new URL(path, window.location.origin), { headers: headers(), cache: "no-store" });
  return { status: response.status, body: await response.json() };
}

export const enc = encodeURIComponent;

/**
 * Follow a Server-Sent Events subscription. EventSource cannot send an Authorization header, so
 * the stream is read with fetch: frames are split at blank lines; `data:` holds one StoredEvent.
 * Calls onEvent(event) per event and onState(text) on changes; reconnects after a drop (resuming
 * with Last-Event-ID) until signal aborts.
 */
export async function follow(path, params, { onEvent, onState, signal }) {
  let lastId = null;
  while (!signal.aborted) {
    try {
      const url = new URL(path, window.location.origin);
      for (const [k, v] of Object.entries(params || {})) {
        if (v === undefined || v === null || v === "") continue;
        for (const item of Array.isArray(v) ? v : [v]) url.searchParams.append(k, String(item));
      }
      const extra = { Accept: "text/event-stream" };
      if (lastId !== null) extra["Last-Event-ID"] = lastId;
      const response = await fetch(url, { headers: headers(extra), signal, cache: "no-store" });
      if (!response.ok) throw await failure(response);
      onState("live");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const parsed = parseFrame(frame);
          if (parsed.event === "error") {
            const body = JSON.parse(parsed.data || "{}").error || {};
            throw new ApiError(0, body.code || "SYS_EVSTORE_INTERNAL", body.message || "subscription ended",
              body.request_id || "");
          }
          if (parsed.data) {
            if (parsed.id) lastId = parsed.id;
            onEvent(JSON.parse(parsed.data));
          }
        }
      }
      if (!signal.aborted) onState("reconnecting");
    } catch (err) {
      if (signal.aborted) return;
      onState(err instanceof ApiError ? `stopped: ${err.explain()}` : `reconnecting (${err.message})`);
      if (err instanceof ApiError && (err.status === 401 || err.status === 403 || err.status === 400)) return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1500));
  }
}

function parseFrame(frame) {
  const out = { event: "", data: "", id: "" };
  const data = [];
  for (const line of frame.split("\n")) {
    if (line.startsWith(":")) continue; // comment: subscribed, keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "event") out.event = value;
    else if (field === "id") out.id = value;
  }
  out.data = data.join("\n");
  return out;
}
