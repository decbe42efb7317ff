// trapkit's verification grid (see trapkit/grid.py for the API). Keyboard first; the mouse works too.
// Every decision is sent at once and saved by the server before the page shows it as saved.
// Actions run one after another (a promise chain), so fast typing keeps its order.
// `document.body.dataset.busy` is "1" while an action runs; `dataset.shown` counts pages fully on screen.
"use strict";

const S = {
  state: null, view: { group: "", order: "high", ref: null },  // "high": the server's DEFAULT_ORDER
  page: 0, pages: 1, total: 0,
  items: [], cursor: 0, selected: new Set(), undo: [], version: 0, chain: Promise.resolve(), pending: 0,
  shown: 0, searchHits: [], searchActive: 0,
};
const $ = (sel) => document.querySelector(sel);
const PAGE_SIZE = new URLSearchParams(location.search).get("size") || "";  // ?size=N: crops per page (default 100)
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const r = await fetch(path, init);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

function say(text, error = false) {
  const el = $("#status");
  el.textContent = text;
  el.classList.toggle("error", error);
}

// Run `fn` after every earlier action; errors show in the status line.
function act(fn) {
  S.pending += 1;
  document.body.dataset.busy = "1";
  S.chain = S.chain.then(fn).catch((e) => say(e.message, true)).finally(() => {
    S.pending -= 1;
    if (S.pending === 0) document.body.dataset.busy = "0";
  });
  return S.chain;
}

// -- sidebar, keys, progress ---------------------------------------------------------------

// Number keys name species only: a group of a taxon above them (a rollup) is a guess to confirm or refine.
function numbered() {
  return S.state.groups.filter((g) => g.name !== "" && !g.taxon).slice(0, 9).map((g) => g.name);
}

function isTaxon(name) { return S.state.groups.some((g) => g.taxon && g.name === name); }

function renderSidebar() {
  const st = S.state;
  $("#title").textContent = st.title;
  document.title = st.title;
  $("#progress").textContent = `${st.done.toLocaleString()} of ${st.total.toLocaleString()} ${st.done_word}`;
  $("#answers-path").textContent = `Answers are saved as you go to ${st.answers_path}`;
  const nums = numbered();
  const rows = [{ name: "", label: "All species", count: st.total, done: st.done, all: true }]
    .concat(st.groups.map((g) => ({ ...g, label: g.name ? (g.taxon ? `${g.name}? (a taxon: confirm or refine)` : g.name) : "(no guess)" })));
  $("#groups").innerHTML = rows.map((g) => {
    const n = g.all ? -1 : nums.indexOf(g.name);
    const current = !g.all === (S.view.group !== "") && g.name === S.view.group;
    return `<li data-group="${esc(g.name)}" data-all="${g.all ? 1 : 0}" class="${current ? "current" : ""} ${n >= 0 ? "numbered" : ""}">`
      + `<kbd>${n >= 0 ? n + 1 : ""}</kbd><span class="name">${esc(g.label)}</span>`
      + `<span class="count">${g.done.toLocaleString()}/${g.count.toLocaleString()}</span></li>`;
  }).join("");
  $("#keys").innerHTML = st.keys.map(([k, what]) => `<dt><kbd>${esc(k)}</kbd></dt><dd>${esc(what)}</dd>`).join("");
  $("#assign").innerHTML = nums.map((name, i) => `<button type="button" data-species="${esc(name)}"><kbd>${i + 1}</kbd> ${esc(name)}</button>`).join("")
    + `<button type="button" class="wrong" data-species="${esc(st.wrong_box)}"><kbd>x</kbd> not an animal / wrong box</button>`;
  $("#order").innerHTML = `${S.view.order === "low" ? "Lowest" : S.view.order === "high" ? "Highest" : "Most similar"} first <kbd>o</kbd>`;
}

async function refreshState() {
  S.state = await api("/api/state");
  renderSidebar();
}

// -- the grid ------------------------------------------------------------------------------

function shownSpecies(it) { return it.answer || it.species || ""; }

function tileClass(it, i) {
  const c = ["tile"];
  if (i === S.cursor) c.push("cursor");
  if (S.selected.has(i)) c.push("selected");
  if (it.answer) c.push(it.answer === S.state.wrong_box ? "wrong" : it.answer !== it.species ? "changed" : "answered");
  if (isTaxon(shownSpecies(it))) c.push("taxon");
  return c.join(" ");
}

function captionHtml(it) {
  const conf = it.conf == null ? "" : it.conf.toFixed(2);
  const model = it.answer && it.answer !== it.species ? ` title="model: ${esc(it.species || "none")} ${conf}"` : "";
  const shown = shownSpecies(it);
  const name = shown && isTaxon(shown) && !it.answer ? `${shown}?` : shown;
  return `<span class="sp"${model}>${esc(name || "(no guess)")}</span><span class="conf">${conf}</span>`;
}

function renderGrid() {
  $("#grid").innerHTML = S.items.map((it, i) => `<figure class="${tileClass(it, i)}" data-i="${i}" data-key="${esc(it.key)}" role="gridcell"`
    + ` title="${esc(it.file)}${it.detection == null ? "" : " #" + it.detection}">`
    + `<img loading="lazy" decoding="async" alt="" src="/thumb?key=${encodeURIComponent(it.key)}">`
    + `<figcaption>${captionHtml(it)}</figcaption></figure>`).join("");
  $("#page-of").textContent = `page ${S.page + 1} of ${S.pages} (${S.total.toLocaleString()} crops)`;
}

function tile(i) { return $(`#grid .tile[data-i="${i}"]`); }

function updateTile(i) {
  const el = tile(i);
  if (!el) return;
  el.className = tileClass(S.items[i], i);
  el.querySelector("figcaption").innerHTML = captionHtml(S.items[i]);
}

function setCursor(i) {
  if (!S.items.length) return;
  const old = S.cursor;
  S.cursor = Math.max(0, Math.min(S.items.length - 1, i));
  updateTile(old);
  updateTile(S.cursor);
  const el = tile(S.cursor);
  if (el) el.scrollIntoView({ block: "nearest" });
}

function columns() {
  const tiles = $("#grid").children;
  if (tiles.length < 2) return 1;
  const top = tiles[0].offsetTop;
  let n = 1;
  while (n < tiles.length && tiles[n].offsetTop === top) n += 1;
  return n;
}

function saveHash() {
  const h = new URLSearchParams({ g: S.view.group, o: S.view.order, p: String(S.page + 1) });
  if (S.view.ref) h.set("r", S.view.ref);
  history.replaceState(null, "", "#" + h.toString());
}

// Wait until every thumbnail inside the viewport has arrived (or failed), then mark the page shown.
function whenShown(t0, serial) {
  return new Promise((resolve) => {
    const check = () => {
      if (serial !== S.serial) return resolve();
      const h = window.innerHeight;
      const waiting = [...document.querySelectorAll("#grid img")].some((img) => {
        const r = img.getBoundingClientRect();
        return r.bottom > 0 && r.top < h && !img.complete;
      });
      if (waiting) return requestAnimationFrame(check);
      performance.measure("trapkit-page", { start: t0, end: performance.now() });
      S.shown += 1;
      document.body.dataset.shown = String(S.shown);
      resolve();
    };
    requestAnimationFrame(check);
  });
}

function pageQuery(page) {
  const q = new URLSearchParams({ group: S.view.group, order: S.view.order, page: String(page) });
  if (S.view.ref) q.set("ref", S.view.ref);
  if (PAGE_SIZE) q.set("size", PAGE_SIZE);
  return "/api/page?" + q.toString();
}

function showPage(data, t0, resume = false, cursor = 0) {
  S.serial = (S.serial || 0) + 1;
  S.page = data.page; S.pages = data.pages; S.total = data.total; S.items = data.items;
  S.selected.clear();
  if (resume) cursor = Math.max(0, S.items.findIndex((it) => !it.answer));  // where the person stopped
  S.cursor = Math.max(0, Math.min(cursor, S.items.length - 1));
  renderGrid();
  renderSidebar();
  saveHash();
  window.scrollTo(0, 0);
  // The next page is fetched once this one is on screen: before, its thumbnails would queue beside this page's.
  const serial = S.serial;
  whenShown(t0, serial).then(() => { if (serial === S.serial) prefetch(S.page + 1); });
}

async function loadPage(page, t0 = performance.now(), cursor = 0) {
  showPage(await api(pageQuery(page)), t0, page < 0, cursor);
}

// The next page's thumbnails, into the browser's cache while the person works on this one
// (the server cuts them meanwhile; the Image objects are kept so their loads are not dropped).
function prefetch(next) {
  S.prefetched = [];
  if (next >= S.pages) return;
  const view = JSON.stringify(S.view);
  api(pageQuery(next)).then((data) => {
    if (JSON.stringify(S.view) !== view) return;
    S.prefetched = data.items.map((it) => { const img = new Image(); img.src = "/thumb?key=" + encodeURIComponent(it.key); return img; });
  }).catch(() => {});
}

function goPage(page, t0) {
  if (page < 0 || page >= S.pages) { say(page < 0 ? "first page" : "last page"); return; }
  return act(() => loadPage(page, t0));
}

function setView(view, page = -1) {
  S.view = { ...S.view, ...view };
  return act(() => loadPage(page));
}

// -- decisions -----------------------------------------------------------------------------

function targets() {
  return S.selected.size ? [...S.selected].sort((a, b) => a - b) : (S.items.length ? [S.cursor] : []);
}

// Apply the server's answer to the items on this page; remember it for undo.
function applied(result, undoable = true) {
  const where = new Map(S.items.map((it, i) => [it.key, i]));
  for (const c of result.applied) {
    const i = where.get(c.key);
    if (i !== undefined) { S.items[i].answer = c.after; updateTile(i); }
  }
  if (undoable && result.applied.length) {
    S.undo.push({ applied: result.applied, view: { ...S.view }, page: S.page });
  }
  S.version = result.version;
}

function assign(species) {
  const chosen = targets();
  if (!chosen.length || !species) return;
  const usedSelection = S.selected.size > 0;
  const keys = chosen.map((i) => S.items[i].key);
  return act(async () => {
    const result = await api("/api/decide", { changes: keys.map((key) => ({ key, species })) });
    applied(result);
    S.selected.clear();
    chosen.forEach(updateTile);
    if (!usedSelection) setCursor(S.cursor + 1);
    say(`saved ${keys.length}: ${species}`);
    await refreshState();
  });
}

function acceptPage() {
  const t0 = performance.now();
  return act(async () => {
    const changes = S.items.filter((it) => !it.answer && it.species).map((it) => ({ key: it.key, species: it.species, expect: null }));
    const saving = changes.length ? api("/api/decide", { changes }) : Promise.resolve({ applied: [], skipped: [], version: S.version });
    // The next page is fetched while the answers are saved; it is shown once both are done.
    const next = S.page + 1 < S.pages ? api(pageQuery(S.page + 1)) : null;
    const [result, data] = await Promise.all([saving, next]);
    applied(result);
    let note = `accepted ${result.applied.length}`;
    if (result.skipped.length) note += `; ${result.skipped.length} answered in another tab meanwhile (kept)`;
    if (data) {
      showPage(data, t0);
      await refreshState();
    } else if (S.view.group !== "" && S.view.order !== "similar") {
      await refreshState();
      const names = S.state.groups.map((g) => g.name);
      const following = S.state.groups.slice(names.indexOf(S.view.group) + 1).find((g) => g.done < g.count);
      if (following) {
        S.view = { ...S.view, group: following.name, ref: null };
        await loadPage(-1, t0);
        note += `; now ${following.name || "(no guess)"}`;
      } else note += "; every group is done";
    } else {
      await refreshState();
      note += "; that was the last page";
    }
    say(note);
  });
}

function sequence() {
  const chosen = targets();
  if (!chosen.length) return;
  const key = S.items[chosen[0]].key;
  return act(async () => {
    const result = await api("/api/sequence", { key });
    applied(result);
    say(result.species ? `sequence of ${result.sequence} crop(s): ${result.applied.length} set to ${result.species}` : "no species to give this sequence");
    await refreshState();
  });
}

function undo() {
  return act(async () => {
    const last = S.undo.pop();
    if (!last) { say("nothing to undo"); return; }
    const changes = last.applied.map((c) => ({ key: c.key, species: c.before, expect: c.after }));
    const result = await api("/api/decide", { changes });
    if (JSON.stringify(last.view) !== JSON.stringify(S.view) || last.page !== S.page) {
      S.view = last.view;
      await loadPage(last.page);
    }
    applied(result, false);
    const first = S.items.findIndex((it) => it.key === last.applied[0].key);
    if (first >= 0) setCursor(first);
    say(`undone ${result.applied.length}` + (result.skipped.length ? `; ${result.skipped.length} changed since (kept)` : ""));
    await refreshState();
  });
}

function toggle(i = S.cursor) {
  if (!S.items.length) return;
  if (S.selected.has(i)) S.selected.delete(i); else S.selected.add(i);
  updateTile(i);
}

// -- search all classes (/) ----------------------------------------------------------------

function openSearch() {
  $("#search").hidden = false;
  const input = $("#search-input");
  input.value = "";
  filterSearch();
  input.focus();
}

function closeSearch() { $("#search").hidden = true; }

function filterSearch() {
  const text = $("#search-input").value.trim();
  const low = text.toLowerCase();
  let hits = S.state.classes.filter((c) => c.toLowerCase().includes(low));
  hits.sort((a, b) => (b.toLowerCase().startsWith(low) - a.toLowerCase().startsWith(low)) || a.localeCompare(b));
  hits = hits.slice(0, 50);
  if (S.state.allow_new_classes && text && !S.state.classes.includes(text)) hits.push(text);
  S.searchHits = hits;
  S.searchActive = 0;
  $("#search-list").innerHTML = hits.map((c, i) => `<li data-n="${i}" class="${i === 0 ? "active" : ""}">${esc(c)}`
    + `${S.state.classes.includes(c) ? "" : " <em>(new class)</em>"}</li>`).join("");
}

function moveSearch(step) {
  const n = S.searchHits.length;
  if (!n) return;
  S.searchActive = (S.searchActive + step + n) % n;
  document.querySelectorAll("#search-list li").forEach((li, i) => li.classList.toggle("active", i === S.searchActive));
}

function pickSearch(i = S.searchActive) {
  const species = S.searchHits[i];
  closeSearch();
  if (species) assign(species);
}

// -- the whole image -----------------------------------------------------------------------

function toggleFrame() {
  const frame = $("#frame");
  if (!frame.hidden) { frame.hidden = true; return; }
  const it = S.items[S.cursor];
  if (!it) return;
  const img = $("#frame-img");
  const box = $("#frame-box");
  box.hidden = !it.bbox;
  if (it.bbox) {
    const [x, y, w, h] = it.bbox;
    Object.assign(box.style, { left: `${x * 100}%`, top: `${y * 100}%`, width: `${w * 100}%`, height: `${h * 100}%` });
  }
  img.src = "/api/frame?key=" + encodeURIComponent(it.key);
  $("#frame-caption").textContent = `${it.file}${it.detection == null ? "" : "  detection " + it.detection}: `
    + `${shownSpecies(it)}${it.conf == null ? "" : " (model " + (it.species || "") + " " + it.conf.toFixed(2) + ")"}`;
  frame.hidden = false;
}

// -- keys and clicks -----------------------------------------------------------------------

function onKey(ev) {
  if (!S.state) return;
  if (!$("#search").hidden) {
    if (ev.key === "Escape") closeSearch();
    else if (ev.key === "Enter") pickSearch();
    else if (ev.key === "ArrowDown") moveSearch(1);
    else if (ev.key === "ArrowUp") moveSearch(-1);
    else return;
    ev.preventDefault();
    return;
  }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (!$("#frame").hidden && ev.key !== "Enter" && ev.key !== "Escape") return;
  const k = ev.key;
  if (k === "ArrowLeft") setCursor(S.cursor - 1);
  else if (k === "ArrowRight") setCursor(S.cursor + 1);
  else if (k === "ArrowUp") setCursor(S.cursor - columns());
  else if (k === "ArrowDown") setCursor(S.cursor + columns());
  else if (k === " ") toggle();
  else if (k >= "1" && k <= "9") assign(numbered()[Number(k) - 1]);
  else if (k === "/") openSearch();
  else if (k === "a") acceptPage();
  else if (k === "e") sequence();
  else if (k === "x") assign(S.state.wrong_box);
  else if (k === "u") undo();
  else if (k === "s") similar();
  else if (k === "o") setView({ order: S.view.order === "high" ? "low" : "high", ref: null }, 0);
  else if (k === "n" || k === "PageDown") goPage(S.page + 1, performance.now());
  else if (k === "p" || k === "PageUp") goPage(S.page - 1, performance.now());
  else if (k === "Enter") toggleFrame();
  else if (k === "Escape") { if (!$("#frame").hidden) toggleFrame(); else { S.selected.clear(); renderGrid(); } }
  else return;
  ev.preventDefault();
}

function similar() {
  const it = S.items[S.cursor];
  if (!it) return;
  say("sorting by similarity…");
  return setView({ order: "similar", ref: it.key }, 0).then(() => {
    if (S.view.order === "similar" && !$("#status").classList.contains("error")) say(`most similar to ${it.file} first`);
  });
}

function onClick(ev) {
  const t = ev.target.closest(".tile");
  if (t) { const i = Number(t.dataset.i); setCursor(i); toggle(i); return; }
  const g = ev.target.closest("#groups li");
  if (g) { setView({ group: g.dataset.all === "1" ? "" : g.dataset.group, ref: null, order: S.view.order === "similar" ? "high" : S.view.order }); return; }
  const b = ev.target.closest("button");
  if (!b) {
    if (ev.target.closest("#frame")) toggleFrame();
    return;
  }
  if (b.dataset.species) { assign(b.dataset.species); return; }
  const acts = {
    accept: acceptPage, sequence, wrong: () => assign(S.state.wrong_box), search: openSearch, undo, similar,
    order: () => setView({ order: S.view.order === "high" ? "low" : "high", ref: null }, 0),
    prev: () => goPage(S.page - 1, performance.now()), next: () => goPage(S.page + 1, performance.now()),
  };
  if (acts[b.dataset.act]) acts[b.dataset.act]();
}

// Another tab saved something: show it here (answers on this page, counts in the sidebar).
async function poll() {
  if (S.pending || !S.state || document.hidden) return;
  try {
    const { version } = await api("/api/version");
    if (version === S.version || S.pending) return;
    S.version = version;
    const q = new URLSearchParams({ keys: S.items.map((it) => it.key).join("\n") });
    const { answers } = await api("/api/answers?" + q.toString());
    S.items.forEach((it, i) => { if (it.key in answers && it.answer !== answers[it.key]) { it.answer = answers[it.key]; updateTile(i); } });
    await refreshState();
  } catch (e) { /* the server stopped; the next action says so */ }
}

async function start() {
  document.addEventListener("keydown", onKey);
  document.addEventListener("click", onClick);
  document.addEventListener("dblclick", (ev) => { if (ev.target.closest(".tile")) toggleFrame(); });
  $("#search-input").addEventListener("input", filterSearch);
  $("#search-list").addEventListener("click", (ev) => { const li = ev.target.closest("li"); if (li) pickSearch(Number(li.dataset.n)); });
  $("#search").addEventListener("click", (ev) => { if (ev.target.id === "search") closeSearch(); });
  const h = new URLSearchParams(location.hash.slice(1));
  const page = h.has("p") ? Number(h.get("p")) - 1 : -1;  // no page given: where the person stopped
  await act(async () => {
    // State and the first page in parallel; with no order in the address the server's default applies.
    const q = new URLSearchParams({ group: h.get("g") || "", page: String(page) });
    if (h.has("o")) q.set("order", h.get("o"));
    if (h.get("r")) q.set("ref", h.get("r"));
    if (PAGE_SIZE) q.set("size", PAGE_SIZE);
    const [state, data] = await Promise.all([api("/api/state"), api("/api/page?" + q.toString())]);
    S.state = state;
    S.version = state.version;
    S.view = { group: data.group, order: data.order, ref: data.ref };
    showPage(data, 0, page < 0);
  });
  setInterval(poll, 3000);
  window.addEventListener("focus", poll);
}

start();
