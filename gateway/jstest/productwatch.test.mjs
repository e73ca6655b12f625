// Tests of productwatch.js (the page's client library) with node's test
// runner, against real gateway processes over a real bridge, NATS and
// PostgreSQL. gateway/jstest_test.go starts those and runs this file with:
//   PW_GATEWAY_BIN  the gateway binary (this file starts and restarts it)
//   DATABASE_URL, NATS_URL, PW_TOKEN
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import net from "node:net";
import WebSocket from "ws";
import { ProductWatch } from "../web/productwatch.js";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run these tests through go test ./gateway -run TestJSClient`);
  return v;
};
const gatewayBin = env("PW_GATEWAY_BIN");
const token = env("PW_TOKEN");

// Every gateway this file starts, stopped at the end whatever happens.
const running = new Set();
after(async () => { await Promise.all([...running].map((g) => g.stop())); });
process.on("exit", () => { for (const g of running) g.proc.kill("SIGKILL"); });

async function freePort() {
  const srv = net.createServer();
  await new Promise((resolve) => srv.listen(0, "127.0.0.1", resolve));
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

// waitFor polls cond every 10 ms until it holds, or fails after ms.
async function waitFor(what, cond, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// startGateway runs the real gateway binary on port (plain HTTP, as behind
// a TLS-terminating load balancer) until stop().
async function startGateway(port) {
  const metricsPort = await freePort();
  const proc = spawn(gatewayBin, [], {
    env: {
      ...process.env,
      LISTEN_ADDR: `127.0.0.1:${port}`,
      METRICS_ADDR: `127.0.0.1:${metricsPort}`,
      INSECURE_HTTP: "true",
      API_TOKEN: token,
      DRAIN_WINDOW: "50ms",
      LOG_FORMAT: "text",
      LOG_LEVEL: "warn",
    },
    stdio: ["ignore", "inherit", "inherit"],
  });
  const exited = new Promise((resolve) => proc.on("exit", resolve));
  const g = {
    proc,
    port,
    base: `http://127.0.0.1:${port}`,
    ws: `ws://127.0.0.1:${port}/websocket`,
    async stop() {
      if (!running.delete(g)) return;
      proc.kill("SIGTERM");
      await exited;
    },
  };
  running.add(g);
  await waitFor(`the gateway on ${port} to be ready`, async () => {
    if (proc.exitCode !== null) throw new Error(`the gateway exited with ${proc.exitCode}`);
    try {
      return (await fetch(`${g.base}/readyz`)).status === 200;
    } catch {
      return false;
    }
  }, 30000);
  return g;
}

// rest sends a write through gateway g and returns the parsed answer.
async function rest(g, method, path, body) {
  const res = await fetch(g.base + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  assert.ok(res.ok, `${method} ${path}: ${res.status} ${await res.clone().text()}`);
  return res.status === 204 ? null : res.json();
}

const product = (name) => ({ manufacturer: "Apple", productName: name, pricePerUnit: "500EUR", unitsAvailable: 6 });

function client(url, options = {}) {
  const pw = new ProductWatch(url, { WebSocket, ...options });
  const log = { changes: [], statuses: [pw.state], reconnects: [], errors: [] };
  pw.addEventListener("change", (e) => log.changes.push(e.detail));
  pw.addEventListener("status", (e) => log.statuses.push(e.detail));
  pw.addEventListener("reconnect", (e) => log.reconnects.push({ ...e.detail, at: Date.now() }));
  pw.addEventListener("servererror", (e) => log.errors.push(e.detail));
  return { pw, log };
}

const version = (pw, id) => pw.products.get(id)?.version;

test("watch-all: products created later arrive, loadAll reads every page, the newest version wins", async (t) => {
  const g = await startGateway(await freePort());
  const before = [];
  for (let i = 0; i < 5; i++) before.push(await rest(g, "POST", "/products", product(`before ${i}`)));

  const { pw, log } = client(g.ws, { pageSize: 2 }); // 2 per page: loadAll must follow next
  t.after(() => pw.close());
  assert.equal(pw.state, "connecting");
  pw.watchAll();
  await waitFor("live", () => pw.state === "live");
  assert.ok(pw.since >= 5, `the watch-all ack gave a resume position (${pw.since})`);
  const read = await pw.loadAll();
  assert.ok(read >= 5, `loadAll read ${read} products`);
  for (const p of before) assert.equal(version(pw, p.productId), 1);

  const fresh = await rest(g, "POST", "/products", product("created after load"));
  await waitFor("the INSERT of a product created after the load", () => version(pw, fresh.productId) === 1);
  await rest(g, "PATCH", `/products/${fresh.productId}`, { unitsAvailable: 5 });
  await waitFor("the UPDATE", () => version(pw, fresh.productId) === 2);
  const insert = log.changes.find((c) => c.productId === fresh.productId && c.action === "INSERT");
  assert.ok(insert && insert.seq > 0 && insert.changedAt, "live changes carry seq and changedAt");
  assert.ok(pw.since >= insert.seq, "since follows the highest seq seen");

  // Newest version wins: a stale state (a REST answer read before the
  // update, say) changes nothing and dispatches nothing.
  const events = log.changes.length;
  assert.equal(pw.apply({ action: "SNAPSHOT", productId: fresh.productId, version: 1, product: insert.product }), false);
  assert.equal(pw.apply({ action: "UPDATE", productId: fresh.productId, version: 2, product: insert.product }), false);
  assert.equal(version(pw, fresh.productId), 2);
  assert.equal(pw.products.get(fresh.productId).product.unitsAvailable, 5);
  assert.equal(log.changes.length, events);
  // A reload after the change keeps it too.
  await pw.loadAll();
  assert.equal(version(pw, fresh.productId), 2);

  await rest(g, "DELETE", `/products/${fresh.productId}`);
  await waitFor("the DELETE", () => pw.products.get(fresh.productId)?.action === "DELETE");
  assert.equal(version(pw, fresh.productId), 3);
  assert.deepEqual(log.errors, []);
  pw.close();
  assert.equal(pw.state, "closed");
  await g.stop();
});

test("resume after a gateway restart: what changed meanwhile arrives, by since and by versions", async (t) => {
  const port = await freePort();
  let g = await startGateway(port);
  const writer = await startGateway(await freePort()); // REST stays up while g is down
  const kept = await rest(writer, "POST", "/products", product("kept"));
  const doomed = await rest(writer, "POST", "/products", product("doomed"));

  const all = client(g.ws);
  const one = client(g.ws); // per-product: resumes with its versions
  t.after(() => { all.pw.close(); one.pw.close(); });
  all.pw.watchAll();
  one.pw.watch([kept.productId, doomed.productId]);
  await waitFor("both live", () => all.pw.state === "live" && one.pw.state === "live");
  await all.pw.loadAll();
  await waitFor("the snapshots", () => version(one.pw, kept.productId) === 1 && version(one.pw, doomed.productId) === 1);
  await rest(writer, "PATCH", `/products/${kept.productId}`, { unitsAvailable: 4 });
  await waitFor("the live update on both", () => version(all.pw, kept.productId) === 2 && version(one.pw, kept.productId) === 2);

  await g.stop();
  await waitFor("both to notice", () => all.pw.state === "reconnecting" && one.pw.state === "reconnecting");
  // Away: an update, a delete, a product created.
  await rest(writer, "PATCH", `/products/${kept.productId}`, { unitsAvailable: 3 });
  await rest(writer, "DELETE", `/products/${doomed.productId}`);
  const born = await rest(writer, "POST", "/products", product("born while away"));
  const sinceBefore = all.pw.since;

  g = await startGateway(port);
  await waitFor("live again", () => all.pw.state === "live" && one.pw.state === "live");
  await waitFor("watch-all caught up", () =>
    version(all.pw, kept.productId) === 3 &&
    all.pw.products.get(doomed.productId)?.action === "DELETE" &&
    version(all.pw, born.productId) === 1);
  await waitFor("per-product caught up", () =>
    version(one.pw, kept.productId) === 3 && one.pw.products.get(doomed.productId)?.action === "DELETE");
  assert.ok(all.pw.since > sinceBefore, "since moved on with the replayed changes");
  // Nothing went backwards on the way: each product's versions only rose.
  for (const { log } of [all, one]) {
    const last = new Map();
    for (const c of log.changes) {
      assert.ok(!(last.get(c.productId) >= c.version), `product ${c.productId} went from v${last.get(c.productId)} to v${c.version}`);
      last.set(c.productId, c.version);
    }
    assert.ok(log.statuses.includes("reconnecting"));
    assert.deepEqual(log.errors, []);
  }
  await g.stop();
  await writer.stop();
});

// openTransaction starts psql on the test's database and runs sql inside a
// transaction it leaves open (so its change log row has taken a seq but is
// not committed); commit() commits it and ends psql.
async function openTransaction(sql) {
  const proc = spawn("psql", [env("DATABASE_URL"), "-X", "-q", "-v", "ON_ERROR_STOP=1"], { stdio: ["pipe", "pipe", "inherit"] });
  let out = "";
  proc.stdout.on("data", (d) => { out += d; });
  const exited = new Promise((resolve) => proc.on("exit", resolve));
  process.on("exit", () => proc.kill("SIGKILL"));
  proc.stdin.write(`BEGIN;\n${sql};\n\\echo statement-done\n`);
  await waitFor("psql to run the statement", () => {
    if (proc.exitCode !== null) throw new Error(`psql exited with ${proc.exitCode}: ${out}`);
    return out.includes("statement-done");
  });
  return {
    async commit() {
      proc.stdin.end("COMMIT;\n");
      const code = await exited;
      assert.equal(code, 0, `psql: ${out}`);
    },
  };
}

test("watch-all resume loses no late commit: a change with a lower seq than since, committed while away", async (t) => {
  const port = await freePort();
  let g = await startGateway(port);
  const writer = await startGateway(await freePort());
  const late = await rest(writer, "POST", "/products", product("committed late"));
  const early = await rest(writer, "POST", "/products", product("committed early"));

  const { pw, log } = client(g.ws);
  t.after(() => pw.close());
  pw.watchAll();
  await waitFor("live", () => pw.state === "live");
  await pw.loadAll();
  assert.equal(version(pw, late.productId), 1);

  // The late one takes its seq first, the early one a higher seq and
  // commits; the client sees the early one, so its since passes the late
  // one's seq.
  const tx = await openTransaction(`UPDATE products SET units_available = 1 WHERE product_id = ${late.productId}`);
  await rest(writer, "PATCH", `/products/${early.productId}`, { unitsAvailable: 2 });
  await waitFor("the early change", () => version(pw, early.productId) === 2);
  const since = pw.since;

  await g.stop();
  await waitFor("reconnecting", () => pw.state === "reconnecting");
  await tx.commit(); // seq below since, committed while away
  const lateSeq = Number(execFileSync("psql", [env("DATABASE_URL"), "-X", "-At", "-c",
    `SELECT seq FROM product_changes WHERE product_id = ${late.productId} AND version = 2`]).toString().trim());
  assert.ok(lateSeq > 0 && lateSeq < since, `the late change's seq ${lateSeq} is below the client's since ${since}`);
  g = await startGateway(port);
  await waitFor("live again", () => pw.state === "live");
  await waitFor("the late commit after the resume", () => version(pw, late.productId) === 2);
  assert.equal(pw.products.get(late.productId).product.unitsAvailable, 1);
  assert.equal(version(pw, early.productId), 2);
  assert.deepEqual(log.errors, []);
  await g.stop();
  await writer.stop();
});

test("batch: the client opens /websocket?batch=1 and applies arrays of events one by one, every version in order", async (t) => {
  const g = await startGateway(await freePort());
  const p = await rest(g, "POST", "/products", product("busy"));
  const urls = [];
  const frames = [];
  class SpyWebSocket extends WebSocket {
    constructor(url) {
      super(url);
      urls.push(url);
      this.addEventListener("message", (e) => frames.push(String(e.data)));
    }
  }
  const { pw, log } = client(g.ws, { WebSocket: SpyWebSocket, batch: true });
  t.after(() => pw.close());
  pw.watch([p.productId]);
  await waitFor("the snapshot", () => version(pw, p.productId) === 1);
  assert.equal(new URL(urls[0]).searchParams.get("batch"), "1");

  // A burst: 60 updates from 4 writers at once (more would mostly wait
  // on the row's lock, and time out on a busy machine).
  await Promise.all(Array.from({ length: 4 }, async (_, w) => {
    for (let i = 0; i < 15; i++) await rest(g, "PATCH", `/products/${p.productId}`, { unitsAvailable: w * 15 + i });
  }));
  await waitFor("every version", () => version(pw, p.productId) === 61);
  const seen = log.changes.filter((c) => c.productId === p.productId).map((c) => c.version);
  assert.deepEqual(seen, Array.from({ length: 61 }, (_, i) => i + 1), "every version, in order");
  const arrays = frames.filter((f) => f.startsWith("["));
  t.diagnostic(`${frames.length} messages for 61 versions, ${arrays.length} arrays`);

  // An array message, as the gateway sends one, through the socket's own
  // handler: each event applied in order.
  const last = pw.products.get(p.productId);
  const ev = (v) => ({ seq: 1000 + v, action: "UPDATE", productId: p.productId, version: v, changedAt: new Date().toISOString(), product: { ...last.product, version: v } });
  pw.ws.onmessage({ data: JSON.stringify([ev(62), ev(63), ev(62)]) });
  assert.equal(version(pw, p.productId), 63);
  assert.deepEqual(log.changes.slice(-2).map((c) => c.version), [62, 63], "applied one by one; the stale one dropped");
  assert.deepEqual(log.errors, []);
  await g.stop();
});

test("reconnect: bounded exponential backoff with jitter, reset once live", async (t) => {
  // The delay function itself: under min(maxDelay, minDelay * 2^n), and random.
  const probe = new ProductWatch("ws://127.0.0.1:9/websocket", { WebSocket: class { constructor() { this.readyState = 0; } close() {} }, minDelay: 100, maxDelay: 1000 });
  probe.close();
  for (let n = 0; n < 40; n++) {
    const ceiling = Math.min(1000, 100 * 2 ** n);
    const delays = Array.from({ length: 50 }, () => probe.backoff(n));
    assert.ok(delays.every((d) => d >= 0 && d < ceiling), `attempt ${n}: delays within [0, ${ceiling})`);
    assert.ok(new Set(delays).size > 40, `attempt ${n}: jittered`);
  }

  // Against a real port with no gateway, then a real gateway.
  const port = await freePort();
  const { pw, log } = client(`ws://127.0.0.1:${port}/websocket`, { minDelay: 20, maxDelay: 160 });
  t.after(() => pw.close());
  pw.watchAll();
  await waitFor("eight failed attempts", () => log.reconnects.length >= 8);
  assert.equal(pw.state, "connecting", "never live yet: still connecting");
  log.reconnects.forEach((r, i) => {
    assert.equal(r.attempt, i);
    assert.ok(r.delay >= 0 && r.delay < Math.min(160, 20 * 2 ** i), `attempt ${i} waited ${r.delay} ms`);
  });
  // The attempts really are spaced by the delays (a reconnect is scheduled
  // only after the previous attempt failed).
  for (let i = 1; i < log.reconnects.length; i++) {
    assert.ok(log.reconnects[i].at - log.reconnects[i - 1].at >= Math.floor(log.reconnects[i - 1].delay) - 2);
  }
  const g = await startGateway(port);
  await waitFor("live once the gateway is up", () => pw.state === "live", 10000);
  assert.equal(pw.attempt, 0, "the attempt count resets once live");
  const mark = log.reconnects.length;
  await g.stop();
  await waitFor("a retry after the gateway went away", () => pw.state === "reconnecting" && log.reconnects.length > mark);
  assert.equal(log.reconnects[mark].attempt, 0, "backoff starts over after a live period");
  assert.equal(log.reconnects[mark].code, 1001, "the gateway said it was going away");
});
