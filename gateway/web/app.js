// The page: every product, from the REST list at once and live after that
// (watch-all), a deleted one struck through, a row selected (click or
// Enter) fills the edit form, the connection state and errors shown.
import { ProductWatch } from "/productwatch.js";

const $ = (sel) => document.querySelector(sel);
const tbody = $("#products tbody");
const rows = new Map(); // productId -> <tr>, kept in id order in the table
// ?pageSize=n reads the list n products at a time (default 500; 1–1000).
const pageSize = Number(new URLSearchParams(location.search).get("pageSize")) || 500;
// batch: a page watching every product gets, under a burst, the events
// waiting together in one WebSocket message instead of one message each.
const pw = new ProductWatch(undefined, { pageSize, batch: true });
window.productwatch = pw; // for the console and for tests

const statusText = { connecting: "connecting", live: "live", reconnecting: "reconnecting", closed: "closed" };
let loading = true;
let loadError = null;

pw.addEventListener("status", (e) => {
  const el = $("#status");
  el.textContent = statusText[e.detail] || e.detail;
  el.className = "status " + e.detail;
  document.body.dataset.status = e.detail;
  showListState();
});
pw.addEventListener("change", (e) => render(e.detail, true));
pw.addEventListener("servererror", (e) => showError(`${e.detail.code}: ${e.detail.message}`));
pw.addEventListener("resync", (e) => log(e.detail.all ? "history lost: reloading the list" : `reload ${e.detail.productIDs.join(", ")}`));
pw.addEventListener("reconnect", (e) => log(`connection closed (${e.detail.code || "no code"}); retrying in ${(e.detail.delay / 1000).toFixed(1)} s`));

// The list state line says what the rows are: still loading, the loaded
// list while the socket is not live yet, or live.
function showListState() {
  const el = $("#list-state");
  const n = [...pw.products.values()].filter((p) => p.action !== "DELETE").length;
  const count = `${n} product${n === 1 ? "" : "s"}`;
  let text, cls;
  if (loadError) {
    [text, cls] = [`Could not load the list: ${loadError}`, "error"];
  } else if (loading) {
    [text, cls] = [`Loading products… (${count} so far)`, "loading"];
  } else if (pw.state === "live") {
    [text, cls] = [`${count}, live`, "live"];
  } else if (pw.state === "reconnecting") {
    [text, cls] = [`${count}; reconnecting: changes made meanwhile will follow`, "stale"];
  } else {
    [text, cls] = [`${count}; connecting for live updates…`, "stale"];
  }
  el.textContent = text;
  el.className = "list-state " + cls;
}

function render(m, live) {
  let tr = rows.get(m.productId);
  if (!tr) {
    tr = document.createElement("tr");
    tr.dataset.id = m.productId;
    tr.tabIndex = 0;
    insertInOrder(tr, m.productId);
    rows.set(m.productId, tr);
  }
  const p = m.product;
  tr.replaceChildren(...[p.productId, p.manufacturer, p.productName, p.pricePerUnit, p.unitsAvailable, m.version].map((v) => {
    const td = document.createElement("td");
    td.textContent = String(v);
    return td;
  }));
  const deleted = m.action === "DELETE";
  tr.classList.toggle("deleted", deleted);
  tr.dataset.version = m.version;
  tr.setAttribute("aria-label", `product ${p.productId}${deleted ? ", deleted" : ""}`);
  if (live && m.action !== "SNAPSHOT") {
    tr.classList.remove("changed");
    void tr.offsetWidth; // restart the highlight
    tr.classList.add("changed");
    log(`${m.action} ${m.productId} v${m.version}`);
  }
  // The product being edited moved on (not by this form's own save): say
  // so; saving now would answer 412 (the form sends If-Match).
  if (selected === m.productId && live && m.action !== "SNAPSHOT" && Number($("#edit").version.value) < m.version && !saving) {
    $("#result").textContent = deleted ? `product ${m.productId} was deleted` : `product ${m.productId} was changed (version ${m.version}): select the row again to edit the new version`;
  }
  showListState();
}

// insertInOrder keeps the rows sorted by id; new products (the highest ids)
// go at the end.
function insertInOrder(tr, id) {
  const last = tbody.lastElementChild;
  if (!last || Number(last.dataset.id) < id) {
    tbody.append(tr);
    return;
  }
  for (const row of tbody.children) {
    if (Number(row.dataset.id) > id) {
      row.before(tr);
      return;
    }
  }
  tbody.append(tr);
}

// Selecting a row fills the edit form.
let selected = null;
let saving = false; // a write of this form is on its way: its own change event is not news
function select(tr) {
  const id = Number(tr.dataset.id);
  const have = pw.products.get(id);
  if (!have) return;
  selected = id;
  for (const row of tbody.querySelectorAll("tr.selected")) row.classList.remove("selected");
  tr.classList.add("selected");
  const f = $("#edit");
  const p = have.product;
  f.productId.value = p.productId;
  f.version.value = have.action === "DELETE" ? "" : have.version;
  f.manufacturer.value = p.manufacturer;
  f.productName.value = p.productName;
  f.pricePerUnit.value = p.pricePerUnit;
  f.unitsAvailable.value = p.unitsAvailable;
  $("#result").textContent = have.action === "DELETE" ? `product ${id} was deleted` : `editing product ${id} (version ${have.version})`;
}
tbody.addEventListener("click", (e) => {
  const tr = e.target.closest("tr");
  if (tr) select(tr);
});
tbody.addEventListener("keydown", (e) => {
  const tr = e.target.closest("tr");
  if (!tr) return;
  if (e.key === "Enter" || e.key === " ") {
    e.preventDefault();
    select(tr);
    enterOn = tr; // the form gets the focus on keyup, so the key itself does not reach (and submit) it
  } else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
    e.preventDefault();
    const next = e.key === "ArrowDown" ? tr.nextElementSibling : tr.previousElementSibling;
    if (next) next.focus();
  }
});

let enterOn = null;
tbody.addEventListener("keyup", (e) => {
  if ((e.key === "Enter" || e.key === " ") && enterOn === e.target.closest("tr")) {
    enterOn = null;
    $("#edit").manufacturer.focus();
  }
});

function log(text) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("#log").prepend(li);
  while ($("#log").children.length > 50) $("#log").lastChild.remove();
}

function showError(text) {
  const p = document.createElement("p");
  p.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("#errors").prepend(p);
  while ($("#errors").children.length > 3) $("#errors").lastChild.remove();
  log(text);
}

// write sends a REST write with the token and, when known, If-Match.
async function write(method, body) {
  const f = $("#edit");
  const id = f.productId.value.trim();
  if (!/^[0-9]+$/.test(id)) {
    $("#result").textContent = "the product id must be a number";
    return;
  }
  const headers = { Authorization: `Bearer ${f.token.value}` };
  if (f.version.value) headers["If-Match"] = `"${f.version.value}"`;
  if (body) headers["Content-Type"] = "application/merge-patch+json";
  let res;
  saving = true;
  try {
    res = await fetch(`/products/${id}`, { method, headers, body: body ? JSON.stringify(body) : undefined });
  } catch (err) {
    $("#result").textContent = `the gateway did not answer: ${err}`;
    return;
  } finally {
    saving = false;
  }
  const answer = res.status === 204 ? {} : await res.json().catch(() => ({}));
  if (res.ok) {
    $("#result").textContent = method === "DELETE" ? `deleted product ${id}` : `saved: version ${answer.version}`;
    if (answer.version) f.version.value = answer.version;
  } else {
    const hint = res.status === 412 ? " (someone changed it meanwhile: select the row again)" : "";
    $("#result").textContent = `${res.status} ${answer.error?.code || ""}: ${answer.error?.message || res.statusText}${hint}`;
  }
}

$("#edit").addEventListener("submit", (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  const patch = {};
  for (const k of ["manufacturer", "productName", "pricePerUnit"]) if (f.get(k)) patch[k] = f.get(k);
  if (f.get("unitsAvailable") !== "") patch.unitsAvailable = Number(f.get("unitsAvailable"));
  write("PATCH", patch);
});
$("#edit").elements.delete.addEventListener("click", () => {
  if (!$("#edit").reportValidity()) return;
  write("DELETE", null);
});

// Watch everything first, then read the list: a change made while the list
// loads arrives live, and the newest version wins either way. The rows show
// page by page, before the socket is even open.
pw.watchAll();
let loadStartedLive = false;
async function load() {
  loadStartedLive = pw.state === "live";
  // Each product the list brings that is newer than what is held comes as
  // a "change" event (a SNAPSHOT): render() shows it as the page arrives.
  await pw.loadAll({ onPage: showListState });
}
const firstLoad = load().then(
  () => { loading = false; showListState(); },
  (err) => { loading = false; loadError = String(err.message || err); showListState(); showError(`could not load the product list: ${loadError}`); },
);
// A list read before the watch-all subscription was confirmed may have
// missed a change committed in between: read it once more when live.
pw.addEventListener("status", async function again(e) {
  if (e.detail !== "live") return;
  pw.removeEventListener("status", again);
  await firstLoad;
  if (!loadStartedLive && !loadError) load().catch((err) => showError(`could not reload the product list: ${err}`));
});
showListState();
