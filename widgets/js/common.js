// ---- common.js: helpers shared by every workbench panel -------------------------------------
// Prepended to each panel's own file (widgets/_base.py: esm) to make one ES module. No network,
// no CDN; every token string is set as text (textContent / canvas fillText), never as HTML.

/** Element builder: h("div", {class: "x", onclick: f}, "text", child). Strings become text nodes. */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") el.className = v;
    else if (k === "style") Object.assign(el.style, v);
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  if (tag === "input" && /^(text|number|search)$/.test(el.type)) {
    // Enter commits the field (fires "change" by leaving it), and JupyterLab's notebook
    // shortcuts never see keys typed into it
    el.addEventListener("keydown", (ev) => {
      ev.stopPropagation();
      if (ev.key === "Enter") el.blur();
    });
  }
  return el;
}

/** Characters that are invisible or change the text's direction: other control characters, the
 * soft hyphen, bidi controls (LRM/RLM/ALM, LRE..RLO, LRI..PDI), zero-width and other format
 * characters, line/paragraph separators, the BOM. */
const INVISIBLE = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]/g;

/** A token as visible text: newlines and tabs get a glyph, spaces stay (CSS white-space: pre),
 * and INVISIBLE characters show as "⟨U+202E⟩" (they can neither hide nor reorder the text). */
function tokenText(t) {
  return String(t).replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5").replace(/\r/g, "\u240d")
    .replace(INVISIBLE, (c) => "\u27e8U+" + c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0") + "\u27e9");
}

// -- binary buffers --------------------------------------------------------------------------
function asArrayBuffer(b) {
  if (b instanceof ArrayBuffer) return b;
  if (ArrayBuffer.isView(b)) return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
  throw new Error("expected a binary buffer, got " + typeof b);
}

let F16_TABLE = null;
/** float16 bytes -> Float32Array (a lookup table, so it works where Float16Array does not). */
function decodeF16(buffer) {
  const u16 = new Uint16Array(asArrayBuffer(buffer));
  if (!F16_TABLE) {
    F16_TABLE = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) {
      const s = i & 0x8000 ? -1 : 1, e = (i >> 10) & 0x1f, f = i & 0x3ff;
      F16_TABLE[i] = e === 0 ? s * f * 2 ** -24 : e === 31 ? (f ? NaN : s * Infinity)
        : s * (1 + f / 1024) * 2 ** (e - 15);
    }
  }
  const out = new Float32Array(u16.length);
  for (let i = 0; i < u16.length; i++) out[i] = F16_TABLE[u16[i]];
  return out;
}

function decode(buffer, dtype) {
  if (dtype === "float16") return decodeF16(buffer);
  const ab = asArrayBuffer(buffer);
  if (dtype === "float32") return new Float32Array(ab);
  if (dtype === "uint8") return new Uint8Array(ab);
  if (dtype === "int32") return new Int32Array(ab);
  throw new Error("unknown dtype " + dtype);
}

/** A lower triangle [n(n+1)/2] (row q: keys 0..q) -> a full row-major [n*n] (upper part NaN). */
function unpackTriangle(tri, n) {
  const out = new Float32Array(n * n).fill(NaN);
  let i = 0;
  for (let q = 0; q < n; q++) for (let k = 0; k <= q; k++) out[q * n + k] = tri[i++];
  return out;
}

// -- lazy fetches from Python ----------------------------------------------------------------
function sortedKey(request) {
  const o = {};
  for (const k of Object.keys(request).sort()) if (k !== "id" && k !== "type") o[k] = request[k];
  return JSON.stringify(o);
}

/** fetchData(request) -> Promise<{meta, buffers}>; Python answers in Panel._answer_fetch. */
function makeFetcher(model) {
  let next = 0;
  const pending = new Map();
  const cache = new Map();
  model.on("msg:custom", (msg, buffers) => {
    if (!msg || msg.type !== "data" || !pending.has(msg.id)) return;
    const { resolve, reject, key } = pending.get(msg.id);
    pending.delete(msg.id);
    if (msg.error) { cache.delete(key); reject(new Error(msg.error)); }
    else resolve({ meta: msg, buffers: buffers || [] });
  });
  const fetchData = (request, { cached = true } = {}) => {
    const key = sortedKey(request);
    if (cached && cache.has(key)) return cache.get(key);
    const p = new Promise((resolve, reject) => {
      const id = "f" + next++;
      pending.set(id, { resolve, reject, key });
      model.send({ type: "fetch", id, ...request });
    });
    if (cached) cache.set(key, p);
    return p;
  };
  fetchData.clear = () => cache.clear();
  return fetchData;
}

// -- colours ---------------------------------------------------------------------------------
const SEQ_STOPS = [[255, 255, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
const DIV_STOPS = [[5, 48, 97], [67, 147, 195], [247, 247, 247], [214, 96, 77], [103, 0, 31]];

function ramp(stops, t) {
  if (!(t >= 0)) t = 0; if (t > 1) t = 1;
  const x = t * (stops.length - 1), i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
  const a = stops[i], b = stops[i + 1];
  return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
}

/** colour(v) -> [r, g, b]; "seq": vmin..vmax white to blue; "div": symmetric about 0. */
function colourScale(kind, vmin, vmax) {
  if (kind === "div") {
    const m = Math.max(Math.abs(vmin), Math.abs(vmax)) || 1;
    return (v) => ramp(DIV_STOPS, 0.5 + v / (2 * m));
  }
  const span = vmax - vmin || 1;
  return (v) => ramp(SEQ_STOPS, (v - vmin) / span);
}

function finiteRange(values) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) if (Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
  return lo === Infinity ? [0, 1] : [lo, hi];
}

/** Draw a rows x cols matrix at one pixel per cell into an offscreen canvas (fast at 1024^2);
 * NaN cells stay blank. Scale it up with drawImage and imageSmoothingEnabled = false. */
function matrixImage(values, rows, cols, colour) {
  const off = document.createElement("canvas");
  off.width = cols; off.height = rows;
  const ctx = off.getContext("2d");
  const img = ctx.createImageData(cols, rows);
  const d = img.data;
  for (let i = 0; i < rows * cols; i++) {
    const v = values[i];
    if (Number.isNaN(v)) { d[4 * i + 3] = 0; continue; }
    const c = colour(v);
    d[4 * i] = c[0]; d[4 * i + 1] = c[1]; d[4 * i + 2] = c[2]; d[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return off;
}

// -- heatmap with labels, hover and click (canvas; labels drawn as text) ----------------------
/**
 * heatmap(opts) -> {el, canvas, draw(newOpts), highlight(r, c)}
 * opts: rows, cols, values (Float32Array rows*cols), kind ("seq"|"div"), vmin, vmax,
 *   rowLabels, colLabels, cellText(r, c) -> string|null, cell (px), onHover(r, c, ev),
 *   onClick(r, c, ev), title, minW / minH (px: cells never narrower / lower, so labels and cell
 *   text stay readable on long prompts; the heatmap then scrolls, up to 16000 x 8000 px)
 */
function heatmap(opts) {
  const canvas = h("canvas", { class: "wb-heatmap" });
  // the row labels again, pinned to the frame's left edge: they stay in view when a wide
  // heatmap scrolls sideways (a copy of the main canvas's label column, in the page only then)
  const pinned = h("canvas", { class: "wb-heatmap-pinned" });
  const el = h("div", { class: "wb-heatmap-wrap" }, canvas);
  let o = null, geom = null, marked = null;
  const draw = (next) => {
    o = { cell: 22, kind: "seq", ...o, ...next };
    const { rows, cols, values } = o;
    const [lo, hi] = finiteRange(values);
    const vmin = o.vmin ?? lo, vmax = o.vmax ?? hi;
    const colour = colourScale(o.kind, vmin, vmax);
    const ctx0 = canvas.getContext("2d");
    ctx0.font = "11px sans-serif";
    const labelW = Math.min(160, Math.max(24, ...(o.rowLabels || []).map((s) => ctx0.measureText(tokenText(s)).width + 8)));
    const labelH = Math.min(120, Math.max(18, ...(o.colLabels || []).map((s) => ctx0.measureText(tokenText(s)).width + 8)));
    const fit = (n, room, least, most) =>  // fit `room` px; at least `least` px (within `most` px)
      Math.max(2, Math.min(o.cell, Math.floor(room / Math.max(1, n))),
        Math.min(least || 0, o.cell, Math.floor(most / Math.max(1, n))));
    const cw = fit(cols, 900, o.minW, 16000), ch = fit(rows, 700, o.minH, 8000);
    const dpr = window.devicePixelRatio || 1;
    const W = labelW + cols * cw + 60, H = labelH + rows * ch + 8;
    canvas.width = W * dpr; canvas.height = H * dpr;
    canvas.style.width = W + "px"; canvas.style.height = H + "px";
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(matrixImage(values, rows, cols, colour), labelW, labelH, cols * cw, rows * ch);
    ctx.fillStyle = "#222"; ctx.font = "11px sans-serif"; ctx.textBaseline = "middle";
    if (o.rowLabels && ch >= 9) {
      ctx.textAlign = "right";
      o.rowLabels.forEach((s, r) => ctx.fillText(tokenText(s), labelW - 4, labelH + r * ch + ch / 2, labelW - 6));
    }
    if (o.colLabels && cw >= 9) {
      ctx.save(); ctx.textAlign = "left";
      o.colLabels.forEach((s, c) => {
        ctx.save(); ctx.translate(labelW + c * cw + cw / 2, labelH - 4); ctx.rotate(-Math.PI / 2);
        ctx.fillText(tokenText(s), 0, 0, labelH - 6); ctx.restore();
      });
      ctx.restore();
    }
    if (o.cellText && cw >= 28 && ch >= 12) {
      ctx.textAlign = "center"; ctx.font = "10px sans-serif";
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {
        const t = o.cellText(r, c);
        if (t === null || t === undefined) continue;
        const col = colour(values[r * cols + c]);
        ctx.fillStyle = col[0] * 0.3 + col[1] * 0.59 + col[2] * 0.11 < 128 ? "#fff" : "#111";
        ctx.fillText(tokenText(t), labelW + c * cw + cw / 2, labelH + r * ch + ch / 2, cw - 2);
      }
    }
    // colour bar
    const bx = labelW + cols * cw + 12, bh = Math.min(rows * ch, 200);
    for (let i = 0; i < bh; i++) {
      const c = colour(vmax - (vmax - vmin) * i / Math.max(1, bh - 1));
      ctx.fillStyle = `rgb(${c[0]},${c[1]},${c[2]})`; ctx.fillRect(bx, labelH + i, 10, 1);
    }
    ctx.fillStyle = "#222"; ctx.textAlign = "left"; ctx.font = "10px sans-serif";
    ctx.fillText(fmt(vmax), bx + 12, labelH + 4); ctx.fillText(fmt(vmin), bx + 12, labelH + bh - 4);
    const wide = cols * cw > 900 && o.rowLabels && ch >= 9;  // wider than the fitting width
    if (!wide) pinned.remove();
    else {
      if (pinned.parentNode !== el) el.append(pinned);
      pinned.width = Math.ceil(labelW * dpr); pinned.height = H * dpr;
      pinned.style.width = labelW + "px"; pinned.style.height = H + "px";
      pinned.getContext("2d").drawImage(canvas, 0, 0, pinned.width, pinned.height, 0, 0, pinned.width, pinned.height);
    }
    geom = { labelW, labelH, cw, ch };
    // where the cells are, in CSS pixels from the canvas's top-left (browser tests click by it)
    canvas.dataset.grid = JSON.stringify({ x0: labelW, y0: labelH, cw, ch, rows, cols });
    if (marked) mark(marked[0], marked[1]);
  };
  const cellAt = (ev) => {
    const r = canvas.getBoundingClientRect();
    const x = ev.clientX - r.left - geom.labelW, y = ev.clientY - r.top - geom.labelH;
    const c = Math.floor(x / geom.cw), rr = Math.floor(y / geom.ch);
    return c >= 0 && rr >= 0 && c < o.cols && rr < o.rows ? [rr, c] : null;
  };
  const mark = (r, c) => {
    const ctx = canvas.getContext("2d");
    ctx.strokeStyle = "#e6550d"; ctx.lineWidth = 2;
    ctx.strokeRect(geom.labelW + c * geom.cw + 1, geom.labelH + r * geom.ch + 1, geom.cw - 2, geom.ch - 2);
  };
  canvas.addEventListener("mousemove", (ev) => { const rc = geom && cellAt(ev); if (o.onHover) o.onHover(rc ? rc[0] : -1, rc ? rc[1] : -1, ev); });
  canvas.addEventListener("mouseleave", (ev) => { if (o.onHover) o.onHover(-1, -1, ev); });
  canvas.addEventListener("click", (ev) => { const rc = geom && cellAt(ev); if (rc && o.onClick) o.onClick(rc[0], rc[1], ev); });
  draw(opts);
  return {
    el, canvas, draw,
    highlight(r, c) { marked = r >= 0 && c >= 0 ? [r, c] : null; draw({}); },
  };
}

function fmt(v) {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 0.01 || a >= 1e4) ? v.toExponential(1) : v.toFixed(a < 1 ? 3 : 2);
}

/** A floating tooltip; show(ev, lines) with plain-text lines, hide(). */
function tooltip(root) {
  const tip = h("div", { class: "wb-tip" });
  tip.style.display = "none";
  root.append(tip);
  return {
    show(ev, lines) {
      tip.replaceChildren(...lines.map((l) => h("div", {}, tokenText(l))));
      const r = root.getBoundingClientRect();
      tip.style.left = (ev.clientX - r.left + 14) + "px";
      tip.style.top = (ev.clientY - r.top + 14) + "px";
      tip.style.display = "block";
    },
    hide() { tip.style.display = "none"; },
  };
}

// -- the panel frame: title, busy, error area, copy as code, export --------------------------
function download(blob, name) {
  const a = h("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

/**
 * frame(model, el, title, {png}) -> {body, toolbar, isStatic}
 * png(): a canvas of the current view (for "PNG" export and Panel.save_png); without it the
 * panel has no PNG button (views that are text, like the hook picker, export as HTML).
 */
function frame(model, el, title, { png } = {}) {
  const isStatic = !!model.get("_static");
  el.classList.add("wb-panel");
  const spinner = h("span", { class: "wb-busy" });
  const status = h("span", { class: "wb-status" });
  const toolbar = h("div", { class: "wb-tools" });
  const codeBtn = h("button", { class: "wb-btn", title: "copy the Python call that reproduces this view" }, "copy as code");
  const pngBtn = h("button", { class: "wb-btn", title: "download the current view as PNG" }, "PNG");
  const htmlBtn = h("button", { class: "wb-btn", title: "download a standalone HTML page of this view" }, "HTML");
  const head = h("div", { class: "wb-head" }, h("span", { class: "wb-title" }, title), spinner, status, toolbar, codeBtn, png ? pngBtn : null, isStatic ? null : htmlBtn);
  const errMsg = h("span", { class: "wb-error-msg" });
  const errDetail = h("pre", { class: "wb-error-detail" });
  const dismiss = h("button", { class: "wb-btn", title: "hide this error" }, "dismiss");
  const errBox = h("div", { class: "wb-error", role: "alert" },
    h("div", { class: "wb-error-row" }, errMsg, dismiss), h("details", {}, h("summary", {}, "traceback"), errDetail));
  const codePre = h("pre", { class: "wb-code" });
  const codeBox = h("details", { class: "wb-code-box" }, h("summary", {}, "code"), codePre);
  const body = h("div", { class: "wb-body" });
  el.replaceChildren(head, errBox, body, codeBox);

  const sync = () => {
    const busy = !!model.get("busy");
    spinner.style.visibility = busy ? "visible" : "hidden";
    el.classList.toggle("wb-is-busy", busy);
    status.textContent = model.get("status") || "";
    const err = model.get("error") || "";
    errBox.style.display = err ? "block" : "none";
    errMsg.textContent = err;
    errDetail.textContent = model.get("error_detail") || "";
    codePre.textContent = model.get("code") || "";
  };
  for (const k of ["busy", "status", "error", "error_detail", "code"]) model.on("change:" + k, sync);
  sync();
  dismiss.addEventListener("click", () => {
    model.set("error", ""); model.set("error_detail", ""); model.save_changes();
  });
  codeBtn.addEventListener("click", async () => {
    const code = model.get("code") || "";
    codeBox.open = true;
    try { await navigator.clipboard.writeText(code); codeBtn.textContent = "copied"; }
    catch { codeBtn.textContent = "select the code below"; }
    setTimeout(() => { codeBtn.textContent = "copy as code"; }, 1500);
  });
  const pngBlob = () => new Promise((resolve, reject) => {
    const c = png && png();
    if (!c) { reject(new Error("nothing to export yet")); return; }
    c.toBlob((b) => (b ? resolve(b) : reject(new Error("the browser could not encode a PNG"))), "image/png");
  });
  const sendPng = async (save) => {
    try {
      const blob = await pngBlob();
      if (save) download(blob, title.replace(/\W+/g, "_") + ".png");
      if (!isStatic) model.send({ type: "png" }, undefined, [await blob.arrayBuffer()]); // (content, callbacks, buffers)
    } catch (e) { showLocalError(e); }
  };
  const showLocalError = (e) => {
    if (isStatic) { errBox.style.display = "block"; errMsg.textContent = String(e); return; }
    model.set("error", "front end: " + (e && e.message ? e.message : String(e))); model.save_changes();
  };
  pngBtn.addEventListener("click", () => sendPng(true));
  htmlBtn.addEventListener("click", () => model.send({ type: "export_html" }));
  model.on("msg:custom", (msg, buffers) => {
    if (!msg) return;
    if (msg.type === "request_png") sendPng(false);
    if (msg.type === "html" && buffers && buffers.length)
      download(new Blob([asArrayBuffer(buffers[0])], { type: "text/html" }), msg.name || "panel.html");
  });
  return { body, toolbar, isStatic, showError: showLocalError };
}

/** A canvas that stacks other canvases vertically (for PNG export of multi-part views). */
function stackCanvases(parts) {
  const list = parts.filter(Boolean);
  if (!list.length) return null;
  const W = Math.max(...list.map((c) => c.width)), H = list.reduce((s, c) => s + c.height, 0);
  const out = document.createElement("canvas");
  out.width = W; out.height = H;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
  let y = 0;
  for (const c of list) { ctx.drawImage(c, 0, y); y += c.height; }
  return out;
}
