// ---- attention.js: the attention panel (widgets/attention.py) --------------------------------
// All heads of a layer as thumbnails (uint8, max-pooled), large views of the chosen heads
// (float16 lower triangles, one pixel or more per cell, drawn once into an image), and a token
// strip coloured by attention. Hover only repaints a transparent overlay and the strip colours,
// so a 1024-token prompt stays responsive. Tokens are shown with textContent / fillText only.

const ATT_VIEW_PX = 560; // a large view's side when the prompt is short; longer: one pixel per cell
const ATT_THUMB_PX = 96;
const ATT_SCORE_LABELS = { previous_token: "prev", induction: "ind", duplicate_token: "dup", first_token: "first" };
const ATT_KEEP = 16; // decoded heads kept in the browser

let ATT_LUT = null;
/** 256 colours of the sequential ramp as [r, g, b] triples, index round(255 * weight). */
function attLut() {
  if (!ATT_LUT) {
    ATT_LUT = new Uint8ClampedArray(256 * 3);
    for (let i = 0; i < 256; i++) ATT_LUT.set(ramp(SEQ_STOPS, i / 255).map(Math.round), 3 * i);
  }
  return ATT_LUT;
}

/** weights [rows*cols] (times scale, in [0, 1]) -> offscreen canvas, one pixel per cell.
 * blank(r, c) or NaN leaves a cell transparent; gamma < 1 lifts small weights. */
function attImage(values, rows, cols, { scale = 1, gamma = 1, blank = null } = {}) {
  const off = document.createElement("canvas");
  off.width = cols; off.height = rows;
  const ctx = off.getContext("2d");
  const img = ctx.createImageData(cols, rows);
  const d = img.data, lut = attLut();
  for (let r = 0, i = 0; r < rows; r++) for (let c = 0; c < cols; c++, i++) {
    const v = values[i];
    if (!(v >= 0) || (blank && blank(r, c))) continue;
    let t = Math.min(1, v * scale);
    if (gamma !== 1) t = Math.pow(t, gamma);
    const j = 3 * Math.round(255 * t);
    d[4 * i] = lut[j]; d[4 * i + 1] = lut[j + 1]; d[4 * i + 2] = lut[j + 2]; d[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return off;
}

function attColour(t) {
  const lut = attLut(), j = 3 * Math.round(255 * Math.max(0, Math.min(1, t)));
  return `rgb(${lut[j]},${lut[j + 1]},${lut[j + 2]})`;
}

/** One large view of head (L, H): a base canvas drawn once per data, an overlay for hover. */
function attView(L, H, title, handlers) {
  const base = h("canvas", { style: { display: "block" } });
  const overlay = h("canvas", { style: { position: "absolute", left: "0", top: "0", cursor: "crosshair" } });
  const stack = h("div", { style: { position: "relative", display: "inline-block" } }, base, overlay);
  const note = h("div", { class: "wb-muted" }, "loading\u2026");
  const el = h("div", { class: "wb-col", style: { maxWidth: "100%", overflow: "auto" } },
    h("div", { style: { fontWeight: "600" } }, title), note, stack);
  const v = { L, H, el, base, data: null, geom: null };
  const cellAt = (ev) => {
    const g = v.geom, r = overlay.getBoundingClientRect();
    if (!g) return null;
    const c = Math.floor((ev.clientX - r.left - g.left) / g.cell), q = Math.floor((ev.clientY - r.top - g.top) / g.cell);
    return q >= 0 && c >= 0 && q < g.n && c < g.n ? [q, c] : null;
  };
  overlay.addEventListener("mousemove", (ev) => handlers.hover(v, cellAt(ev), ev));
  overlay.addEventListener("mouseleave", (ev) => handlers.hover(v, null, ev));
  overlay.addEventListener("click", (ev) => { const qc = cellAt(ev); if (qc) handlers.click(qc[0]); });
  v.fail = (msg) => { note.textContent = msg; };
  v.titled = () => { // the view with its title, for the PNG export
    const out = document.createElement("canvas");
    out.width = base.width; out.height = base.height + 20;
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, out.width, out.height);
    ctx.fillStyle = "#222"; ctx.font = "bold 13px sans-serif"; ctx.textBaseline = "top";
    ctx.fillText(title, 4, 3, out.width - 8);
    ctx.drawImage(base, 0, 20);
    return out;
  };
  v.setData = (data, tokens, gamma) => {
    v.data = data;
    const n = data.n, cell = n <= ATT_VIEW_PX ? Math.max(1, Math.min(24, Math.floor(ATT_VIEW_PX / n))) : 1;
    const labels = cell >= 10 && tokens.length === n, pad = labels ? 72 : 4;
    const g = { n, cell, left: pad, top: pad, size: n * cell };
    v.geom = g;
    const W = g.left + g.size + 4, Hh = g.top + g.size + 4, dpr = window.devicePixelRatio || 1;
    for (const c of [base, overlay]) {
      c.width = W * dpr; c.height = Hh * dpr; c.style.width = W + "px"; c.style.height = Hh + "px";
    }
    const ctx = base.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, Hh);
    ctx.fillStyle = "#eee"; ctx.fillRect(g.left, g.top, g.size, g.size); // masked (upper) part
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(attImage(data.full, n, n, { gamma }), g.left, g.top, g.size, g.size);
    if (labels) {
      ctx.fillStyle = "#222"; ctx.font = "11px sans-serif"; ctx.textBaseline = "middle";
      ctx.textAlign = "right";
      tokens.forEach((s, i) => ctx.fillText(tokenText(s), g.left - 4, g.top + i * cell + cell / 2, g.left - 6));
      ctx.textAlign = "left";
      tokens.forEach((s, i) => {
        ctx.save(); ctx.translate(g.left + i * cell + cell / 2, g.top - 4); ctx.rotate(-Math.PI / 2);
        ctx.fillText(tokenText(s), 0, 0, g.top - 6); ctx.restore();
      });
    }
    note.textContent = `${n} \u00d7 ${n}: rows are queries, columns keys (click a row to pin it)`;
  };
  v.paint = (q, k, pin) => {
    const g = v.geom;
    if (!g) return;
    const dpr = window.devicePixelRatio || 1, ctx = overlay.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    const band = Math.max(g.cell, 1), edge = (x) => Math.max(1, x);
    if (pin >= 0 && pin < g.n) {
      ctx.fillStyle = "#08306b"; ctx.fillRect(g.left - 4, g.top + pin * g.cell, 3, edge(g.cell));
    }
    ctx.lineWidth = 1;
    if (q >= 0 && q < g.n) {
      ctx.fillStyle = "rgba(230,85,13,0.15)"; ctx.fillRect(g.left, g.top + q * g.cell, g.size, band);
      ctx.strokeStyle = "#e6550d"; ctx.strokeRect(g.left - 0.5, g.top + q * g.cell - 0.5, g.size + 1, band + 1);
    }
    if (k >= 0 && k < g.n) {
      ctx.fillStyle = "rgba(117,107,177,0.15)"; ctx.fillRect(g.left + k * g.cell, g.top, band, g.size);
      ctx.strokeStyle = "#756bb1"; ctx.strokeRect(g.left + k * g.cell - 0.5, g.top - 0.5, band + 1, g.size + 1);
    }
  };
  return v;
}

function render({ model, el }) {
  const views = [];
  let thumbs = null, scores = null, gamma = 1, mode = "query", hover = { q: -1, k: -1, view: 0 };
  let viewGen = 0, thumbGen = 0, rafPending = false;
  const mats = new Map();
  const fetchData = makeFetcher(model);
  const { body, toolbar, isStatic } = frame(model, el, "attention", {
    png: () => stackCanvases([thumbSheet(), ...views.map((v) => (v.data ? v.titled() : null))]),
  });
  const send = (k, v) => { model.set(k, v); model.save_changes(); };

  // -- controls ------------------------------------------------------------------------------
  const promptBox = h("textarea", { rows: "2", style: { width: "100%", boxSizing: "border-box" },
    placeholder: "type a prompt, then Enter (Shift+Enter: new line)" });
  promptBox.value = model.get("prompt") || "";
  const runBtn = h("button", { class: "wb-btn", onclick: () => send("prompt", promptBox.value) }, "run");
  promptBox.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); send("prompt", promptBox.value); }
  });
  const layerSel = h("select", { title: "layer", onchange: () => send("layer", +layerSel.value) });
  const headSel = h("select", { title: "head", onchange: () => send("head", +headSel.value) });
  const qBtn = h("button", { class: "wb-btn", title: "hovering a token shows where it attends" }, "query \u2192 keys");
  const kBtn = h("button", { class: "wb-btn", title: "hovering a token shows which queries attend to it" }, "key \u2190 queries");
  const gBtn = h("button", { class: "wb-btn", title: "square-root colour scale: small weights become visible" }, "\u221a contrast");
  const clearBtn = h("button", { class: "wb-btn", title: "stop showing the picked heads", onclick: () => send("heads", []) }, "clear picked heads");
  const cvBtn = h("button", { class: "wb-btn", title: "write circuitsvis's HTML of this layer next to the notebook",
    onclick: () => model.send({ type: "action", name: "circuitsvis" }) }, "circuitsvis");
  const notice = h("span", { class: "wb-muted" });
  qBtn.addEventListener("click", () => { mode = "query"; syncButtons(); schedule(); });
  kBtn.addEventListener("click", () => { mode = "key"; syncButtons(); schedule(); });
  gBtn.addEventListener("click", () => { gamma = gamma === 1 ? 0.5 : 1; syncButtons(); renderThumbs(); redrawViews(); });
  toolbar.append(...[h("span", { class: "wb-muted" }, "layer"), layerSel, h("span", { class: "wb-muted" }, "head"), headSel,
    qBtn, kBtn, gBtn, clearBtn, isStatic ? null : cvBtn, notice].filter(Boolean));
  const info = h("div", { class: "wb-muted" });
  const grid = h("div", { style: { display: "flex", flexWrap: "wrap", gap: "6px", margin: "4px 0" } });
  const viewsBox = h("div", { style: { display: "flex", flexWrap: "wrap", gap: "12px", alignItems: "flex-start" } });
  const strip = h("div", { style: { lineHeight: "1.9", margin: "6px 0", maxHeight: "220px", overflow: "auto" } });
  if (!isStatic) body.append(h("div", { class: "wb-row", style: { flexWrap: "nowrap" } }, promptBox, runBtn));
  const legend = h("div", { class: "wb-muted" });
  body.append(info, grid, viewsBox, legend, strip);
  const tip = tooltip(el);
  let spans = [], stripKey = "", stripLines = [];

  const syncButtons = () => {
    qBtn.classList.toggle("wb-on", mode === "query"); kBtn.classList.toggle("wb-on", mode === "key");
    gBtn.classList.toggle("wb-on", gamma !== 1);
    clearBtn.style.display = (model.get("heads") || []).length ? "" : "none";
    notice.textContent = model.get("notice") || "";
  };
  const fillSelect = (sel, n, value) => {
    if (sel.options.length !== n) sel.replaceChildren(...Array.from({ length: n }, (_, i) => h("option", { value: String(i) }, String(i))));
    sel.value = String(value);
  };
  const syncControls = () => {
    fillSelect(layerSel, model.get("n_layers"), model.get("layer"));
    fillSelect(headSel, model.get("n_heads"), model.get("head"));
    layerSel.disabled = isStatic;
    if (document.activeElement !== promptBox) promptBox.value = model.get("prompt") || "";
    const n = (model.get("tokens") || []).length, nh = model.get("n_heads"), nkv = model.get("n_kv_heads");
    info.textContent = n ? `${n} tokens \u00b7 layer ${model.get("layer")} \u00b7 ${nh} query heads` +
      (nkv < nh ? ` sharing ${nkv} key/value heads (grouped-query: every query head is shown)` : "") : "no prompt yet";
    syncButtons();
  };
  const viewList = () => {
    const out = [], seen = new Set();
    for (const [L, H] of [[model.get("layer"), model.get("head")], ...(model.get("heads") || [])]) {
      if (!seen.has(L + "," + H)) { seen.add(L + "," + H); out.push([L, H]); }
    }
    return out.slice(0, 3);
  };
  const scoreText = (L, H) => {
    if (!scores) return "";
    const { meta, values } = scores, [nk, nl, nh] = meta.shape;
    if (L >= nl || H >= nh) return "";
    return meta.kinds.map((kind, i) => `${ATT_SCORE_LABELS[kind] || kind} ${values[(i * nl + L) * nh + H].toFixed(2).replace(/^0/, "")}`).join(" ");
  };

  // -- data ------------------------------------------------------------------------------------
  const headData = (L, H) => {
    const key = L + "," + H;
    if (!mats.has(key)) {
      const p = fetchData({ kind: "head", layer: L, head: H }).then(({ meta, buffers }) =>
        ({ n: meta.n, full: unpackTriangle(decode(buffers[0], meta.dtype), meta.n) }));
      p.catch(() => mats.delete(key));
      mats.set(key, p);
      while (mats.size > ATT_KEEP) mats.delete(mats.keys().next().value);
    }
    return mats.get(key);
  };

  async function drawThumbs() {
    const my = ++thumbGen;
    thumbs = null;
    grid.replaceChildren();
    if (!(model.get("tokens") || []).length) return;
    try {
      const { meta, buffers } = await fetchData({ kind: "thumbs", layer: model.get("layer") });
      if (my !== thumbGen) return;
      thumbs = { meta, values: decode(buffers[0], "uint8") };
      renderThumbs();
    } catch (e) {
      if (my === thumbGen) grid.replaceChildren(h("span", { class: "wb-muted" }, "no thumbnails: " + e.message));
    }
  }

  function renderThumbs() {
    if (!thumbs) return;
    const { meta, values } = thumbs, [nh, m] = meta.shape, L = meta.layer;
    const head = model.get("head"), picked = new Set((model.get("heads") || []).map(([l, hh]) => l + "," + hh));
    const group = nh / Math.max(1, model.get("n_kv_heads"));
    const cells = [];
    for (let H = 0; H < nh; H++) {
      const c = h("canvas", { width: String(ATT_THUMB_PX), height: String(ATT_THUMB_PX), style: { display: "block" } });
      const ctx = c.getContext("2d");
      ctx.fillStyle = "#eee"; ctx.fillRect(0, 0, ATT_THUMB_PX, ATT_THUMB_PX);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(attImage(values.subarray(H * m * m, (H + 1) * m * m), m, m,
        { scale: 1 / 255, gamma, blank: (r, cc) => cc > r }), 0, 0, ATT_THUMB_PX, ATT_THUMB_PX);
      const on = L === model.get("layer") && H === head;
      const label = `H${H}` + (group > 1 ? ` \u00b7 kv ${Math.floor(H / group)}` : "");
      const sc = scoreText(L, H);
      cells.push(h("div", {
        class: "wb-col", title: `L${L}H${H}: click to view large`, "data-head": String(H),
        style: { gap: "1px", width: ATT_THUMB_PX + "px", cursor: "pointer", padding: "2px", borderRadius: "3px",
          outline: on ? "2px solid #e6550d" : picked.has(L + "," + H) ? "2px dashed #756bb1" : "1px solid #ddd" },
        onclick: () => send("head", H),
      }, c, h("div", { style: { fontSize: "11px", fontWeight: "600" } }, label),
      h("div", { style: { fontSize: "10px", color: "#555", lineHeight: "1.2" } }, sc)));
    }
    grid.replaceChildren(...cells);
  }

  function thumbSheet() {
    const cells = [...grid.querySelectorAll("[data-head]")];
    if (!cells.length) return null;
    const cols = Math.min(8, cells.length), cw = ATT_THUMB_PX + 8, ch = ATT_THUMB_PX + 34;
    const out = document.createElement("canvas");
    out.width = cols * cw; out.height = Math.ceil(cells.length / cols) * ch;
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, out.width, out.height);
    ctx.fillStyle = "#222"; ctx.font = "10px sans-serif"; ctx.textBaseline = "top";
    cells.forEach((cell, i) => {
      const x = (i % cols) * cw + 4, y = Math.floor(i / cols) * ch + 2, H = +cell.dataset.head;
      ctx.drawImage(cell.querySelector("canvas"), x, y);
      ctx.fillText(`L${thumbs.meta.layer}H${H}`, x, y + ATT_THUMB_PX + 2, ATT_THUMB_PX);
      ctx.fillText(scoreText(thumbs.meta.layer, H), x, y + ATT_THUMB_PX + 15, ATT_THUMB_PX);
    });
    return out;
  }

  async function drawViews() {
    const my = ++viewGen;
    views.length = 0;
    viewsBox.replaceChildren();
    if (!(model.get("tokens") || []).length) return;
    const handlers = {
      hover: (v, qc, ev) => {
        if (!qc) { hover = { q: -1, k: -1, view: 0 }; tip.hide(); schedule(); return; }
        hover = { q: qc[0], k: qc[1], view: views.indexOf(v) };
        const toks = model.get("tokens") || [], w = v.data.full[qc[0] * v.data.n + qc[1]];
        tip.show(ev, [`L${v.L}H${v.H}`, `query ${qc[0]}  ${toks[qc[0]] ?? ""}`, `key   ${qc[1]}  ${toks[qc[1]] ?? ""}`,
          `weight ${Number.isNaN(w) ? "masked" : fmt(w)}`]);
        schedule();
      },
      click: (q) => send("position", model.get("position") === q ? -1 : q),
    };
    for (const [L, H] of viewList()) {
      const sc = scoreText(L, H);
      const v = attView(L, H, `L${L}H${H}` + (sc ? `   (${sc})` : ""), handlers);
      views.push(v); viewsBox.append(v.el);
    }
    await Promise.all(views.map(async (v) => {
      try {
        const data = await headData(v.L, v.H);
        if (my === viewGen) v.setData(data, model.get("tokens") || [], gamma);
      } catch (e) { if (my === viewGen) v.fail("no data: " + e.message); }
    }));
    if (my === viewGen) schedule();
  }

  function redrawViews() {
    for (const v of views) if (v.data) v.setData(v.data, model.get("tokens") || [], gamma);
    schedule();
  }

  // -- token strip -----------------------------------------------------------------------------
  function drawStrip() {
    const toks = model.get("tokens") || [];
    spans = toks.map((t, i) => h("span", { class: "wb-tok", "data-i": String(i) }, tokenText(t)));
    strip.replaceChildren(...spans);
    schedule();
  }
  const stripIndex = (ev) => (ev.target && ev.target.dataset && ev.target.dataset.i !== undefined ? +ev.target.dataset.i : -1);
  strip.addEventListener("mousemove", (ev) => {
    const t = stripIndex(ev);
    if (t < 0) return;
    hover = mode === "query" ? { q: t, k: -1, view: 0 } : { q: -1, k: t, view: 0 };
    const v = views[0], toks = model.get("tokens") || [], key = `${mode}${t}|${viewGen}|${v && v.data ? 1 : 0}`;
    if (key === stripKey) { tip.show(ev, stripLines); schedule(); return; }
    stripKey = key; stripLines = [];
    if (v && v.data) {
      const n = v.data.n, pairs = [];
      for (let j = 0; j < n; j++) {
        const w = mode === "query" ? v.data.full[t * n + j] : v.data.full[j * n + t];
        if (w >= 0) pairs.push([w, j]);
      }
      pairs.sort((a, b) => b[0] - a[0]);
      stripLines = [`${mode} ${t}  ${toks[t] ?? ""}   (L${v.L}H${v.H})`,
        mode === "query" ? "attends most to:" : "attended most by:",
        ...pairs.slice(0, 3).map(([w, j]) => `  ${fmt(w)}  ${j}  ${toks[j] ?? ""}`)];
      tip.show(ev, stripLines);
    }
    schedule();
  });
  strip.addEventListener("mouseleave", () => { stripKey = ""; hover = { q: -1, k: -1, view: 0 }; tip.hide(); schedule(); });
  strip.addEventListener("click", (ev) => { const t = stripIndex(ev); if (t >= 0) send("position", model.get("position") === t ? -1 : t); });

  function paint() {
    rafPending = false;
    const pin = model.get("position");
    let { q, k } = hover;
    if (q < 0 && k < 0 && pin >= 0) q = pin;
    for (const v of views) v.paint(q, k, pin);
    const src = views[hover.view] || views[0], data = src && src.data;
    const column = mode === "key" && k >= 0;
    const vals = new Float32Array(spans.length).fill(NaN);
    if (data && data.n === spans.length && (column || q >= 0)) {
      const n = data.n;
      for (let j = 0; j < n; j++) vals[j] = column ? data.full[j * n + k] : data.full[q * n + j];
    }
    let max = 0;
    for (const w of vals) if (w > max) max = w;
    legend.textContent = !spans.length ? "" : max > 0
      ? `tokens coloured by the weight ${column ? `each query gives key ${k}` : `query ${q} gives each key`}` +
        ` (L${src.L}H${src.H}), relative to its largest, ${fmt(max)}`
      : `hover a token (${mode === "query" ? "as a query: where it attends" : "as a key: who attends to it"}), or a cell of a view; click pins a query`;
    spans.forEach((s, j) => {
      const w = vals[j];
      s.style.background = w > 0 ? attColour(w / max) : "";
      s.style.color = w / max > 0.6 ? "#fff" : "";
      s.classList.toggle("wb-sel", j === (column ? k : q));
      s.style.boxShadow = !column && j === k ? "inset 0 -3px 0 #756bb1" : "";
    });
  }
  function schedule() {
    if (rafPending) return;
    rafPending = true;
    requestAnimationFrame(paint);
  }

  // -- wiring ----------------------------------------------------------------------------------
  const listeners = [];
  const on = (names, f) => { for (const n of names) { model.on("change:" + n, f); listeners.push(["change:" + n, f]); } };
  on(["tokens"], () => { syncControls(); drawStrip(); });
  on(["revision"], () => { fetchData.clear(); mats.clear(); syncControls(); drawThumbs(); drawViews(); });
  on(["layer"], () => { syncControls(); drawThumbs(); drawViews(); });
  on(["head", "heads"], () => { syncControls(); renderThumbs(); drawViews(); });
  on(["position"], schedule);
  on(["notice", "prompt", "n_layers", "n_heads"], syncControls);
  syncControls(); drawStrip(); drawThumbs(); drawViews();
  fetchData({ kind: "scores" }).then(({ meta, buffers }) => {
    scores = { meta, values: decode(buffers[0], meta.dtype) };
    renderThumbs(); drawViews();
  }).catch(() => {}); // scores are optional (a static export may lack them); Python shows the error
  return () => { for (const [ev, f] of listeners) model.off(ev, f); };
}

export default { render };
