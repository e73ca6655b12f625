// The page: the product list, watching, live updates, an edit form.
import { ProductWatch } from "/productwatch.js";

const $ = (sel) => document.querySelector(sel);
const rows = new Map(); // productId -> <tr>
const pw = new ProductWatch();
window.productwatch = pw; // for the console and for tests

pw.addEventListener("status", (e) => {
  const el = $("#status");
  el.textContent = e.detail;
  el.className = "status " + e.detail;
});
pw.addEventListener("change", (e) => render(e.detail));
pw.addEventListener("servererror", (e) => log(`${e.detail.code}: ${e.detail.message}`));

function render(m) {
  let tr = rows.get(m.productId);
  if (!tr) {
    tr = document.createElement("tr");
    tr.dataset.id = m.productId;
    $("#products tbody").append(tr);
    rows.set(m.productId, tr);
  }
  const p = m.product;
  tr.replaceChildren(...[p.productId, p.manufacturer, p.productName, p.pricePerUnit, p.unitsAvailable, m.version].map((v) => {
    const td = document.createElement("td");
    td.textContent = String(v);
    return td;
  }));
  tr.classList.toggle("deleted", m.action === "DELETE");
  tr.classList.remove("changed");
  void tr.offsetWidth; // restart the highlight
  if (m.action !== "SNAPSHOT") tr.classList.add("changed");
  log(`${m.action} ${m.productId} v${m.version}`);
}

function log(text) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("#log").prepend(li);
  while ($("#log").children.length > 50) $("#log").lastChild.remove();
}

async function loadList() {
  const res = await fetch("/products?limit=100");
  const body = await res.json();
  const ids = body.products.map((p) => p.productId);
  $("#ids").value = ids.join(",");
  pw.watch(ids);
}

$("#watch").addEventListener("submit", (e) => {
  e.preventDefault();
  pw.watch($("#ids").value.split(/[\s,]+/).filter(Boolean));
});

$("#edit").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  const patch = {};
  for (const k of ["manufacturer", "productName", "pricePerUnit"]) if (f.get(k)) patch[k] = f.get(k);
  if (f.get("unitsAvailable") !== "") patch.unitsAvailable = Number(f.get("unitsAvailable"));
  const res = await fetch(`/products/${encodeURIComponent(f.get("productId"))}`, {
    method: "PATCH",
    headers: { "Content-Type": "application/merge-patch+json", Authorization: `Bearer ${f.get("token")}` },
    body: JSON.stringify(patch),
  });
  const body = res.status === 204 ? {} : await res.json();
  $("#result").textContent = res.ok ? `saved: version ${body.version}` : `${res.status} ${body.error?.code}: ${body.error?.message}`;
});

loadList().catch((err) => log(`could not load the product list: ${err}`));
