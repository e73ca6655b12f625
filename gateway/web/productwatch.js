// productwatch.js — a client for productwatch's /websocket (and its REST
// list), usable on its own: an ES module, no dependencies, for browsers and
// Node (pass a WebSocket implementation). Types: /productwatch.d.ts.
//
//   import { ProductWatch } from "/productwatch.js";
//   const pw = new ProductWatch();                // wss://<this host>/websocket
//   pw.addEventListener("change", (e) => console.log(e.detail)); // {action, productId, version, product, seq?}
//   pw.addEventListener("status", (e) => console.log(e.detail)); // "connecting" | "live" | "reconnecting" | "closed"
//   pw.watchAll();                                 // every product, present and future
//   await pw.loadAll();                            // their current state, from GET /products (all pages)
//   pw.watch([1, 2, 3]);                           // or some products, with a snapshot
//   pw.products                                    // Map productId -> newest {action, version, product}
//
// Events (all CustomEvent; the payload is in detail):
//   status       the connection state changed: "connecting" (first attempt),
//                "live" (open and subscribed), "reconnecting" (the socket is
//                gone; retrying with backoff), "closed" (close() was called).
//   change       a product moved on: a live change (INSERT, UPDATE, DELETE,
//                with seq), a SNAPSHOT (subscribe, resume, or loadAll). Only
//                ever a newer version than the one held: older or equal ones
//                are dropped, whatever their path.
//   servererror  the gateway refused a command or reported a problem:
//                {type:"error", code, message, productIDs?, all?}.
//   resync       history was lost: {all:true} (the client reloads the list
//                itself when loadAll was used) or {productIDs} (these were
//                forgotten: reload them).
//   reconnect    a reconnect is scheduled: {attempt, delay, code, reason}.
//
// Options: minDelay, maxDelay (reconnect backoff, ms), WebSocket and fetch
// (implementations, for Node), restURL, pageSize (loadAll's pages), batch
// (true: open /websocket?batch=1, so that events waiting together come as
// one JSON array message — fewer messages for a busy client; events are
// applied one by one either way).
//
// Reconnects: exponential backoff with full jitter — attempt n waits a
// random delay in [0, min(maxDelay, minDelay * 2^n)) — so a gateway's clients
// do not all come back at once; the attempt count resets once live. On every
// reconnect it resumes: per-product subscriptions with the versions held
// (the gateway sends only what moved on, deletes included), watch-all with
// since = the highest change seq seen. since cannot cover a change whose
// transaction took a lower seq and committed while the client was away
// (seq order is not commit order), so once a watch-all resume is
// acknowledged a client that used loadAll re-reads the list in the
// background (newest version wins; a product no longer listed becomes a
// DELETE): every change is then in the list or arrives live.
export class ProductWatch extends EventTarget {
  constructor(url = defaultURL(), options = {}) {
    super();
    const {
      minDelay = 250,
      maxDelay = 10000,
      WebSocket: WebSocketImpl = globalThis.WebSocket,
      fetch: fetchImpl = globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined,
      restURL = restBase(url),
      pageSize = 500,
      batch = false,
    } = options;
    this.url = url;
    this.batch = batch;
    this.restURL = restURL;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.pageSize = pageSize;
    this.WebSocket = WebSocketImpl;
    this.fetch = fetchImpl;
    /** productId -> {action, version, product}: the newest state of each product (deletes kept). */
    this.products = new Map();
    this.watched = new Set();
    this.watchingAll = false;
    this.since = 0; // highest change seq seen (or position acknowledged): the watch-all resume point
    this.state = "connecting";
    this.attempt = 0;
    this.ws = null;
    this.stopped = false;
    this.everLive = false;
    this.loadedAll = false;
    this.reloading = false; // a background loadAll (after a resume or a resync) is running
    this.reloadAgain = false;
    this.generation = 0; // counts changes applied: tells a reload what moved on meanwhile
    this.commands = 0;
    this.timer = null;
    this.connect();
  }

  /** watch subscribes to ids; the gateway sends each one's current state first. */
  watch(ids) {
    const fresh = [...ids].map(Number).filter((id) => Number.isSafeInteger(id) && id > 0 && !this.watched.has(id));
    fresh.forEach((id) => this.watched.add(id));
    if (fresh.length) this.send({ command: "subscribe", productIDs: fresh, snapshot: true });
  }

  /** unwatch stops watching ids (only this client's interest goes). */
  unwatch(ids) {
    const gone = [...ids].map(Number).filter((id) => this.watched.delete(id));
    if (!this.watchingAll) gone.forEach((id) => this.products.delete(id));
    if (gone.length) this.send({ command: "unsubscribe", productIDs: gone });
  }

  /** watchAll receives the changes of every product, including ones created later. */
  watchAll() {
    if (this.watchingAll) return;
    this.watchingAll = true;
    if (this.isOpen()) this.subscribeAll();
  }

  /** unwatchAll stops watching every product (per-product watches stay). */
  unwatchAll() {
    if (!this.watchingAll) return;
    this.watchingAll = false;
    this.send({ command: "unsubscribe", all: true });
  }

  /**
   * loadAll reads every product over REST (GET /products, following next)
   * and applies each as a SNAPSHOT (newest version wins). onPage, if given,
   * is called after each page with its products. It resolves to the number
   * of products read. Call it after watchAll: changes made during the load
   * then arrive live, and the newest version wins either way.
   */
  async loadAll({ onPage, signal } = {}) {
    if (!this.fetch) throw new Error("loadAll needs fetch (pass options.fetch)");
    this.loadedAll = true;
    const startedAt = this.generation;
    const seen = new Set();
    let next = `/products?limit=${this.pageSize}`;
    while (next) {
      const res = await this.fetch(new URL(next, this.restURL), { signal, headers: { Accept: "application/json" } });
      if (!res.ok) {
        let detail = "";
        try { detail = (await res.json()).error?.message || ""; } catch { /* not JSON */ }
        throw new Error(`GET ${next}: ${res.status} ${detail}`.trim());
      }
      const body = await res.json();
      for (const p of body.products) {
        seen.add(p.productId);
        this.apply({ action: "SNAPSHOT", productId: p.productId, version: p.version, product: p });
      }
      if (onPage) onPage(body.products);
      next = body.next || null;
    }
    // What the list no longer has was deleted (unless it moved on during
    // the load: then the live change is newer than anything read here).
    for (const [id, have] of this.products) {
      if (!seen.has(id) && have.action !== "DELETE" && have.generation <= startedAt) {
        this.apply({ action: "DELETE", productId: id, version: have.version + 1, product: have.product });
      }
    }
    return seen.size;
  }

  /**
   * apply takes a change, snapshot or REST state into products if it is
   * newer than what is held, and dispatches "change"; it returns whether it
   * did. An older or equal version is dropped.
   */
  apply(m) {
    const have = this.products.get(m.productId);
    if (have && have.version >= m.version) return false;
    this.generation++;
    this.products.set(m.productId, { action: m.action, version: m.version, product: m.product, generation: this.generation });
    if (m.seq > this.since) this.since = m.seq;
    this.dispatchEvent(new CustomEvent("change", { detail: m }));
    return true;
  }

  /** close stops the client for good. */
  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000, "bye");
    this.setState("closed");
  }

  /** backoff returns the delay before reconnect attempt n (0-based): full jitter under a doubling, bounded ceiling. */
  backoff(n) {
    const ceiling = Math.min(this.maxDelay, this.minDelay * 2 ** Math.min(n, 30));
    return Math.random() * ceiling;
  }

  connect() {
    if (this.stopped) return;
    this.setState(this.everLive ? "reconnecting" : "connecting");
    const ws = new this.WebSocket(this.batch ? withBatch(this.url) : this.url);
    this.ws = ws;
    ws.onopen = () => {
      if (this.watched.size) {
        // Resume: the versions held say what not to send again.
        const versions = {};
        for (const id of this.watched) {
          const have = this.products.get(id);
          if (have) versions[id] = have.version;
        }
        this.send({ command: "subscribe", productIDs: [...this.watched], snapshot: true, versions });
      }
      if (this.watchingAll) this.subscribeAll();
      else this.becomeLive();
    };
    ws.onmessage = (e) => {
      let m;
      try {
        m = JSON.parse(typeof e.data === "string" ? e.data : String(e.data));
      } catch {
        return; // the gateway only sends JSON
      }
      if (Array.isArray(m)) m.forEach((event) => this.receive(event)); // a batch (options.batch)
      else this.receive(m);
    };
    ws.onerror = () => {}; // onclose follows with the code
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      const delay = this.backoff(this.attempt);
      this.dispatchEvent(new CustomEvent("reconnect", { detail: { attempt: this.attempt, delay, code: e.code, reason: e.reason } }));
      this.attempt++;
      this.setState(this.everLive ? "reconnecting" : "connecting");
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }

  subscribeAll(fresh = false) {
    const cmd = { command: "subscribe", all: true, id: `all-${++this.commands}` };
    if (this.since > 0 && !fresh) cmd.since = this.since;
    this.send(cmd);
  }

  becomeLive() {
    this.attempt = 0;
    this.everLive = true;
    this.setState("live");
  }

  receive(m) {
    if (m.type === "ack") {
      if (m.all && m.command === "subscribe") {
        if (m.seq > this.since) this.since = m.seq;
        this.becomeLive();
        // A resume by since cannot see a change whose transaction took a
        // lower seq but committed while this client was away (seq order is
        // not commit order). The subscription is live now, so the current
        // list covers every such change: re-read it, newest version wins.
        if (m.since !== undefined && this.loadedAll) this.reload();
      }
      return;
    }
    if (m.type === "error") {
      this.dispatchEvent(new CustomEvent("servererror", { detail: m }));
      if (m.code === "resync" && m.all) {
        if (m.id === undefined && this.since > 0) {
          this.subscribeAll(); // live changes may have been missed: resume from since
          return;
        }
        // The log no longer reaches back to since: start afresh and reload.
        this.since = 0;
        this.subscribeAll(true);
        this.dispatchEvent(new CustomEvent("resync", { detail: { all: true } }));
        if (this.loadedAll) this.reload();
        return;
      }
      if (m.code === "resync" || m.code === "not_found") {
        for (const id of m.productIDs || []) this.products.delete(id);
        if (m.code === "resync") this.dispatchEvent(new CustomEvent("resync", { detail: { productIDs: m.productIDs || [] } }));
      }
      return;
    }
    if (m.type) return; // a message type this version does not know
    if (m.action) this.apply(m);
  }

  // reload re-reads the list (loadAll) in the background, one at a time: a
  // reload asked for while one runs starts again once it ends, since the
  // running one may have read pages before the reason for the new one.
  reload() {
    if (this.reloading) {
      this.reloadAgain = true;
      return;
    }
    this.reloading = true;
    this.loadAll()
      .catch((err) => this.dispatchEvent(new CustomEvent("servererror", { detail: { type: "error", code: "reload_failed", message: String(err) } })))
      .finally(() => {
        this.reloading = false;
        if (this.reloadAgain && !this.stopped) {
          this.reloadAgain = false;
          this.reload();
        }
      });
  }

  isOpen() {
    return this.ws !== null && this.ws.readyState === 1; // OPEN, in browsers and in ws alike
  }

  send(command) {
    if (this.isOpen()) this.ws.send(JSON.stringify(command));
    // Otherwise the next open subscribes to everything watched.
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("status", { detail: state }));
  }
}

// withBatch adds batch=1 to a /websocket URL: the gateway then sends the
// events that wait together as one JSON array message.
function withBatch(url) {
  const u = new URL(url, typeof location === "undefined" ? undefined : location.href);
  u.searchParams.set("batch", "1");
  return u.href;
}

function defaultURL() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/websocket`;
}

// restBase is the REST API's origin for a WebSocket URL: the same host,
// http(s) instead of ws(s).
function restBase(url) {
  const u = new URL(url, typeof location === "undefined" ? undefined : location.href);
  u.protocol = u.protocol === "wss:" ? "https:" : u.protocol === "ws:" ? "http:" : u.protocol;
  u.pathname = "/";
  u.search = "";
  return u.href;
}
