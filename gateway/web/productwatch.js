// productwatch.js — a small client for productwatch's /websocket.
//
//   import { ProductWatch } from "/productwatch.js";
//   const pw = new ProductWatch();               // wss://<this host>/websocket
//   pw.addEventListener("change", (e) => console.log(e.detail));   // {action, productId, version, product}
//   pw.addEventListener("status", (e) => console.log(e.detail));   // "connecting" | "open" | "closed"
//   pw.watch([1, 2, 3]);                          // subscribe (with a snapshot)
//   pw.unwatch([2]);
//   pw.products                                   // Map productId -> newest {action, version, product}
//
// It reconnects by itself with exponential backoff and jitter, and resumes:
// on every (re)connect it subscribes again with the versions it holds, so
// the gateway sends only what moved on while it was away (deletes included),
// then live changes. It keeps only the newest version of each product: an
// older or equal version never overwrites a newer one.
export class ProductWatch extends EventTarget {
  constructor(url = defaultURL(), { minDelay = 250, maxDelay = 10000 } = {}) {
    super();
    this.url = url;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.products = new Map(); // productId -> {action, version, product}
    this.watched = new Set();
    this.attempt = 0;
    this.ws = null;
    this.stopped = false;
    this.connect();
  }

  // watch subscribes to ids; the gateway sends each one's current state first.
  watch(ids) {
    const fresh = ids.map(Number).filter((id) => Number.isSafeInteger(id) && id > 0 && !this.watched.has(id));
    fresh.forEach((id) => this.watched.add(id));
    if (fresh.length) this.send({ command: "subscribe", productIDs: fresh, snapshot: true });
  }

  // unwatch stops watching ids (only this client's interest goes).
  unwatch(ids) {
    const gone = ids.map(Number).filter((id) => this.watched.delete(id));
    gone.forEach((id) => this.products.delete(id));
    if (gone.length) this.send({ command: "unsubscribe", productIDs: gone });
  }

  // close stops the client for good.
  close() {
    this.stopped = true;
    if (this.ws) this.ws.close(1000, "bye");
  }

  connect() {
    this.status("connecting");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.status("open");
      if (this.watched.size) {
        // Resume: the versions held say what not to send again.
        const versions = {};
        for (const [id, p] of this.products) versions[id] = p.version;
        this.send({ command: "subscribe", productIDs: [...this.watched], snapshot: true, versions });
      }
    };
    ws.onmessage = (e) => this.receive(JSON.parse(e.data));
    ws.onclose = (e) => {
      this.status("closed", e.code);
      if (this.stopped) return;
      // Exponential backoff with full jitter, so that a gateway's clients do
      // not all come back at the same instant.
      const ceiling = Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt++);
      setTimeout(() => this.connect(), Math.random() * ceiling);
    };
  }

  receive(m) {
    if (m.type === "error") {
      this.dispatchEvent(new CustomEvent("servererror", { detail: m }));
      if (m.code === "resync" || m.code === "not_found") {
        for (const id of m.productIDs || []) this.products.delete(id);
      }
      return;
    }
    if (m.type) return; // acks
    const have = this.products.get(m.productId);
    if (have && have.version >= m.version) return; // never go back
    this.products.set(m.productId, { action: m.action, version: m.version, product: m.product });
    this.dispatchEvent(new CustomEvent("change", { detail: m }));
  }

  send(command) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(command));
    // Otherwise the next open subscribes to everything watched.
  }

  status(state, code) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("status", { detail: state, code }));
  }
}

function defaultURL() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/websocket`;
}
