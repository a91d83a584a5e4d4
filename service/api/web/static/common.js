// Shared by every page: API calls with the key, building DOM safely, the key box, live events, images.
// No framework and no build step. API data only ever reaches the page through textContent and attributes,
// never innerHTML.
"use strict";

const fmnist = (() => {
  const KEY_STORAGE = "fmnist.apiKey";
  // The app's mount point behind a proxy (ASGI root_path): every path below is relative to it.
  const ROOT = document.body.dataset.root || "";
  const href = (path) => ROOT + path;
  const FINAL = new Set(["succeeded", "failed", "cancelled", "pruned"]);

  class ApiError extends Error {
    constructor(status, detail) {
      super(ApiError.describe(status, detail));
      this.status = status;
      this.detail = detail;
    }

    static describe(status, detail) {
      if (Array.isArray(detail)) {
        return detail.map((error) => `${(error.loc || []).join(".")}: ${error.msg}`).join("; ");
      }
      return typeof detail === "string" ? detail : `the server answered ${status}`;
    }
  }

  function apiKey() {
    return localStorage.getItem(KEY_STORAGE) || "";
  }

  // Whether calls need a key: the server said so when it rendered the page (or could not say), or this browser
  // holds one.
  const asksForKey = () => document.body.dataset.auth !== "open" || Boolean(apiKey());

  function authHeaders(extra = {}) {
    const headers = { ...extra };
    const key = apiKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    return headers;
  }

  async function errorOf(response) {
    let detail = null;
    try {
      detail = (await response.json()).detail;
    } catch {
      // not JSON (a proxy's error page, say): the status says enough
    }
    if (response.status === 401) showKeyBox(apiKey() ? "The server refused this key: enter another." : "This server needs an API key.");
    return new ApiError(response.status, detail);
  }

  // fetch with the key; JSON in and out. Throws ApiError with the server's detail when the answer is not 2xx.
  async function api(path, { method = "GET", json, body, headers = {}, signal } = {}) {
    const init = { method, headers: authHeaders(headers), signal, cache: "no-store" };
    if (json !== undefined) {
      init.body = JSON.stringify(json);
      init.headers["Content-Type"] = "application/json";
    } else if (body !== undefined) {
      init.body = body;
    }
    const response = await fetch(href(path), init);
    if (!response.ok) throw await errorOf(response);
    if (response.status === 204) return null;
    return response.json();
  }

  // An image from the API (it needs the key, so no plain <img src>): fetched as a blob, shown by object URL.
  async function loadImage(img, path) {
    const response = await fetch(href(path), { headers: authHeaders(), cache: "no-store" });
    if (!response.ok) throw await errorOf(response);
    const url = URL.createObjectURL(await response.blob());
    const previous = img.dataset.objectUrl;
    await new Promise((resolve, reject) => {
      img.onload = resolve;
      img.onerror = () => reject(new Error(`${path} is not an image the browser can show`));
      img.src = url;
    });
    img.dataset.objectUrl = url;
    img.dataset.loaded = path;
    if (previous) URL.revokeObjectURL(previous);
    img.hidden = false;
  }

  // A file from the API saved through the browser's download, with the key.
  async function download(path, filename) {
    const response = await fetch(href(path), { headers: authHeaders() });
    if (!response.ok) throw await errorOf(response);
    const url = URL.createObjectURL(await response.blob());
    const link = el("a", { href: url, download: filename });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }

  // Server-sent events over fetch: EventSource cannot send an Authorization header.
  // Calls onEvent({type, data, id}) per event; resolves when the server closes the stream.
  async function streamEvents(path, { onEvent, lastEventId = null, signal } = {}) {
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (lastEventId !== null) headers["Last-Event-ID"] = String(lastEventId);
    const response = await fetch(href(path), { headers, signal, cache: "no-store" });
    if (!response.ok) throw await errorOf(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let event = { type: "message", data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      // A lone "\r" at the end may be the first half of "\r\n": keep it for the next chunk.
      const lines = buffer.split(/\r\n|\n|\r(?!$)/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (event.data.length) onEvent({ type: event.type, data: event.data.join("\n"), id: event.id });
          event = { type: "message", data: [], id: null };
          continue;
        }
        if (line.startsWith(":")) continue; // a keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "event") event.type = text;
        else if (field === "data") event.data.push(text);
        else if (field === "id") event.id = text;
      }
    }
  }

  // el("a", {href, class: "x"}, "text", child...): children are nodes or text (never parsed as HTML).
  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "dataset") Object.assign(node.dataset, value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const percent = (value) => (value === null || value === undefined ? "–" : `${(100 * value).toFixed(2)}%`);
  const fixed = (value, digits = 4) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
  // Seconds as "8.4 s" or "2 min 5 s".
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    const whole = Math.round(seconds);
    return `${Math.floor(whole / 60)} min ${whole % 60} s`;
  }
  const bytes = (n) => (n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1024 / 1024).toFixed(1)} MiB`);

  // Ids are 32 hex digits; the first 12 tell jobs and models apart in a table (the title holds the rest).
  const shortId = (id) => el("code", { title: id }, id.length > 12 ? `${id.slice(0, 12)}…` : id);

  function statusBadge(status) {
    return el("span", { class: `status status-${status}`, dataset: { status } }, status);
  }

  function summary(spec) {
    const layers = [784, ...spec.hidden_layers, 10].join("-");
    return `${layers} ${spec.activation}, ${spec.optimizer} lr ${spec.lr}, batch ${spec.batch_size}, ${spec.epochs} epochs`;
  }

  function flash(message) {
    const node = document.getElementById("flash");
    node.textContent = message;
    node.hidden = !message;
  }

  // What a page does with an error it did not expect: say it (a 401 has already opened the key box).
  function report(error) {
    if (error instanceof ApiError && error.status === 401) return;
    if (error instanceof ApiError && error.status === 403) {
      flash(`This key may not do that: ${error.message}`);
      return;
    }
    flash(error.message || String(error));
  }

  function showKeyBox(message) {
    document.getElementById("key-toggle").hidden = false; // a key is needed after all (one created since)
    const box = document.getElementById("key-box");
    box.hidden = false;
    document.getElementById("key-message").textContent = message || "";
    document.getElementById("key-input").focus();
  }

  // The key button shows where the server asks for a key (the template hides it where the server said it is
  // open), wherever this browser holds one, so that it can be changed or forgotten, and after any 401.
  function setUpKeyBox() {
    const box = document.getElementById("key-box");
    const toggle = document.getElementById("key-toggle");
    if (apiKey()) toggle.hidden = false;
    toggle.title = apiKey() ? "An API key is stored in this browser" : "Enter the API key this server asks for";
    toggle.addEventListener("click", () => {
      if (box.hidden) showKeyBox(apiKey() ? "A key is stored in this browser." : "");
      else box.hidden = true;
    });
    box.addEventListener("submit", (event) => {
      event.preventDefault();
      const key = document.getElementById("key-input").value.trim();
      if (!key) return;
      localStorage.setItem(KEY_STORAGE, key);
      location.reload();
    });
    document.getElementById("key-forget").addEventListener("click", () => {
      localStorage.removeItem(KEY_STORAGE);
      location.reload();
    });
  }

  document.addEventListener("DOMContentLoaded", setUpKeyBox);

  return {
    FINAL, ApiError, href, asksForKey, api, loadImage, download, streamEvents, el, percent, fixed, when, duration, bytes,
    shortId, statusBadge, summary, flash, report, showKeyBox,
  };
})();
