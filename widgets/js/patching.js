// ---- patching.js: the activation patching panel (widgets/patching.py) --------------------------
// Inputs (clean / corrupted prompts, answer / wrong tokens, metric, site, index, direction), the two
// tokenizations side by side, the cost, run / cancel with a progress bar, the sweep's heatmap
// (float16 grid fetched per version), the attribution estimate beside it, and a clicked cell's
// detail. Every token is set as text; common.js comes first in the same module.

const DIFF_BG = "#fdd0a2";

function render({ model, el }) {
  const fetchData = makeFetcher(model);
  const maps = { exact: null, attribution: null };
  const mapCanvas = (which) => maps[which] && maps[which].el.style.display !== "none" ? maps[which].canvas : null;
  const { body, isStatic, showError } = frame(model, el, "activation patching", {
    png: () => stackCanvases([mapCanvas("exact"), model.get("attribution") ? mapCanvas("attribution") : null]),
  });
  const set = (key, value) => { model.set(key, value); model.save_changes(); };
  const action = (name, args = {}) => model.send({ type: "action", name, args });
  const on = (keys, fn) => { for (const k of keys) model.on("change:" + k, fn); };

  // -- inputs ---------------------------------------------------------------------------------
  const textInput = (key, placeholder, width) => {
    const inp = h("input", { type: "text", placeholder, title: placeholder, style: { width } });
    inp.value = model.get(key) || "";
    inp.disabled = isStatic;
    inp.addEventListener("change", () => set(key, inp.value)); // no trim: leading spaces matter
    on([key], () => { if (inp.value !== (model.get(key) || "")) inp.value = model.get(key) || ""; });
    return inp;
  };
  const selectInput = (key, options) => {
    const sel = h("select", {});
    sel.disabled = isStatic;
    const fill = () => {
      const opts = options();
      sel.replaceChildren(...opts.map(([v, label]) => h("option", { value: v }, label)));
      const cur = model.get(key) || (opts[0] && opts[0][0]) || "";
      sel.value = cur;
      sel.style.display = opts.length > 1 ? "" : "none";
    };
    sel.addEventListener("change", () => set(key, sel.value));
    fill();
    return { el: sel, fill };
  };
  const labelled = (text, input, width) => h("label", { class: "wb-row", style: { margin: 0, gap: "4px" } },
    h("span", { class: "wb-muted", style: { minWidth: width } }, text), input);

  const clean = textInput("prompt", "clean prompt", "min(44em, 90%)");
  const corrupted = textInput("corrupted", "corrupted prompt (same number of tokens)", "min(44em, 90%)");
  const answer = textInput("answer", "answer token, e.g. ' Mary'", "8em");
  const wrong = textInput("wrong", "wrong token, e.g. ' John'", "8em");
  // the prompts' tokens as suggestions for the two token pickers (the value is the exact token)
  const listId = "wb-patch-tokens-" + Math.random().toString(36).slice(2);
  const suggestions = h("datalist", { id: listId });
  answer.setAttribute("list", listId); wrong.setAttribute("list", listId);
  const syncSuggestions = () => {
    const seen = [...new Set([...(model.get("clean_tokens") || []), ...(model.get("corrupted_tokens") || [])])];
    suggestions.replaceChildren(...seen.map((t) => h("option", { value: t }, JSON.stringify(tokenText(t)))));
  };
  on(["clean_tokens", "corrupted_tokens"], syncSuggestions);
  const metric = selectInput("metric", () => Object.entries(model.get("metric_options") || {}));
  const site = selectInput("site", () => Object.keys(model.get("site_options") || {}).map((s) => [s, s]));
  const index = selectInput("index", () => ((model.get("site_options") || {})[model.get("site")] || [])
    .map((v, i) => [i === 0 ? "" : v, v + (i === 0 ? " (default)" : "")]));
  const direction = selectInput("direction", () => [["denoise", "denoise (clean into corrupted)"],
    ["noise", "noise (corrupted into clean)"]]);
  on(["metric_options", "metric"], metric.fill);
  on(["site_options", "site"], () => { site.fill(); index.fill(); });
  on(["index"], index.fill);
  on(["direction"], direction.fill);
  const wrongBox = labelled("wrong", wrong);
  const syncWrong = () => { wrongBox.style.display = /logit|normalized/.test(model.get("metric")) ? "" : "none"; };
  on(["metric"], syncWrong); syncWrong();
  const attrBtn = h("button", { class: "wb-btn", title: "show attribution patching (a linear estimate) beside the exact sweep" }, "attribution");
  attrBtn.disabled = isStatic;
  attrBtn.addEventListener("click", () => set("attribution", !model.get("attribution")));

  // -- tokens and alignment -------------------------------------------------------------------
  const tokens = h("div", { style: { overflowX: "auto", margin: "4px 0" } });
  const alignBox = h("div", { style: { background: "#fff4e5", border: "1px solid #f0b46a", padding: "4px 8px", borderRadius: "3px", margin: "4px 0" } });
  const alignMsg = h("span", { style: { whiteSpace: "pre-wrap" } });
  const alignBtn = h("button", { class: "wb-btn", title: "patch only the tokens that match at the start and the end" }, "align matching tokens");
  const clearAlign = h("button", { class: "wb-btn", title: "patch position by position again" }, "clear alignment");
  alignBtn.disabled = clearAlign.disabled = isStatic;
  alignBtn.addEventListener("click", () => action("align"));
  clearAlign.addEventListener("click", () => set("positions", []));
  alignBox.append(alignMsg, " ", alignBtn);
  const aligned = h("div", { class: "wb-row wb-muted" });
  const tokCell = (t, i, differs) => h("span", { class: "wb-tok", title: "position " + i,
    style: { background: differs.has(i) ? DIFF_BG : "#f0f0f0", textAlign: "center" } }, tokenText(t));
  const syncTokens = () => {
    const c = model.get("clean_tokens") || [], d = model.get("corrupted_tokens") || [];
    const n = Math.max(c.length, d.length);
    const dc = new Set(model.get("clean_differs") || []), dd = new Set(model.get("corrupted_differs") || []);
    const grid = h("div", { style: { display: "grid", gridTemplateColumns: `auto repeat(${n}, auto)`,
      gap: "1px 2px", justifyContent: "start", alignItems: "center" } },
      h("span", {}), ...Array.from({ length: n }, (_, i) => h("span", { class: "wb-muted", style: { fontSize: "10px", textAlign: "center" } }, String(i))),
      h("span", { class: "wb-muted", style: { paddingRight: "6px" } }, "clean"),
      ...Array.from({ length: n }, (_, i) => (i < c.length ? tokCell(c[i], i, dc) : h("span", {}))),
      h("span", { class: "wb-muted", style: { paddingRight: "6px" } }, "corrupted"),
      ...Array.from({ length: n }, (_, i) => (i < d.length ? tokCell(d[i], i, dd) : h("span", {}))));
    tokens.replaceChildren(...(n ? [grid] : []));
    const msg = model.get("alignment") || "";
    alignBox.style.display = msg ? "block" : "none";
    alignMsg.textContent = msg;
    const pos = model.get("positions") || [];
    aligned.style.display = pos.length ? "flex" : "none";
    aligned.replaceChildren(`aligned ${pos.length} positions (clean\u2194corrupted): ` +
      pos.map(([a, b]) => `${a}\u2194${b}`).join(", "), clearAlign);
  };
  on(["clean_tokens", "corrupted_tokens", "clean_differs", "corrupted_differs", "alignment", "positions"], syncTokens);

  // -- metric note, cost, run / cancel / progress ---------------------------------------------
  const note = h("div", { class: "wb-muted", style: { color: "#a05a00" } });
  const cost = h("span", { class: "wb-muted" });
  const runBtn = h("button", { class: "wb-btn", title: "patch every cell (in the background)" }, "run sweep");
  const cancelBtn = h("button", { class: "wb-btn", title: "stop after the current forward pass" }, "cancel");
  const bar = h("progress", { class: "wb-progress", max: "1", value: "0" });
  const progressText = h("span", { class: "wb-muted" });
  runBtn.addEventListener("click", () => action("run"));
  cancelBtn.addEventListener("click", () => action("cancel"));
  const syncRun = () => {
    note.textContent = model.get("metric_note") || "";
    note.style.display = note.textContent ? "block" : "none";
    cost.textContent = model.get("cost") ? "full sweep: " + model.get("cost") : "";
    const running = !!model.get("running");
    runBtn.disabled = isStatic || running;
    cancelBtn.disabled = isStatic || !running;
    const [done, total] = model.get("progress") || [0, 0];
    bar.max = Math.max(1, total); bar.value = done;
    const meta = model.get("exact_meta") || {};
    progressText.textContent = (total > 1 ? `${done}/${total} cells` : "") +
      (meta.partial ? " \u2014 partial result (cancelled)" : "");
    attrBtn.classList.toggle("wb-on", !!model.get("attribution"));
  };
  on(["metric_note", "cost", "running", "progress", "exact_meta", "attribution"], syncRun);

  // -- heatmaps -------------------------------------------------------------------------------
  const tip = tooltip(el);
  const caption = () => h("div", { class: "wb-muted", style: { width: "0", minWidth: "100%" } }); // no widening
  const captions = { exact: caption(), attribution: caption() };
  const boxes = { exact: h("div", { class: "wb-col" }, captions.exact), attribution: h("div", { class: "wb-col" }, captions.attribution) };
  const compare = h("div", { class: "wb-muted" });
  const metaOf = (which) => model.get(which === "exact" ? "exact_meta" : "attribution_meta") || {};
  const scale = (values) => { // both maps share the baselines' scale (values past it saturate)
    let m = 0;
    for (const which of ["exact", "attribution"]) {
      const meta = metaOf(which);
      for (const v of [meta.clean_value, meta.corrupted_value]) if (Number.isFinite(v)) m = Math.max(m, Math.abs(v));
    }
    if (!m) for (const v of values) if (Number.isFinite(v)) m = Math.max(m, Math.abs(v));
    return m || 1;
  };
  const locate = (meta) => {
    const L = model.get("layer"), P = model.get("position"), H = model.get("head");
    if (meta.kind === "layer_head") return [L, H];
    const c = (meta.clean_positions || []).indexOf(P);
    if (c < 0) return [-1, -1];
    return meta.kind === "layer_pos" ? [L, c] : [L * meta.n_heads + H, c];
  };
  const drawMap = (which, meta, values) => {
    const m = scale(values);
    const opts = {
      rows: meta.rows, cols: meta.cols, values, kind: "div", vmin: -m, vmax: m,
      rowLabels: meta.row_labels, colLabels: meta.col_labels,
      cellText: (r, c) => { const v = values[r * meta.cols + c]; return Number.isFinite(v) ? fmt(v) : null; },
      onHover: (r, c, ev) => {
        if (r < 0) { tip.hide(); return; }
        const v = values[r * meta.cols + c];
        tip.show(ev, [`${meta.row_labels[r]} \u00b7 ${meta.col_labels[c]}`,
          `${which === "exact" ? "patched" : "estimated"} ${meta.metric || "metric"}: ${Number.isFinite(v) ? fmt(v) : "not run"}`,
          isStatic ? "" : "click: patch this cell alone"].filter(Boolean));
      },
      onClick: (r, c) => { if (!isStatic) action("click", { row: r, col: c }); },
    };
    if (!maps[which]) { maps[which] = heatmap(opts); boxes[which].append(maps[which].el); }
    else maps[which].draw(opts);
    maps[which].el.style.display = "";
    const [r, c] = locate(meta);
    maps[which].highlight(r, c);
    const base = meta.direction === "noise" ? "clean" : "corrupted";
    captions[which].textContent = (which === "exact" ? "exact patching" : "attribution patching (estimate)") +
      ` \u2014 ${meta.site} by ${meta.index}; rows: ${meta.row_axis}, columns: ${meta.col_axis}` +
      (Number.isFinite(meta.clean_value) ? `; clean ${fmt(meta.clean_value)}, corrupted ${fmt(meta.corrupted_value)} (unpatched: ${base})` : "") +
      (meta.source === "none" ? " \u2014 run the sweep, or click a cell" : "") +
      (meta.source === "clicks" ? ` \u2014 ${meta.n_done} clicked cell(s)` : "") +
      (meta.partial ? ` \u2014 PARTIAL: ${meta.n_done} of ${meta.n_cells} cells (cancelled)` : "");
  };
  const load = async (which) => {
    const meta = metaOf(which);
    const show = meta.rows && (which === "exact" || model.get("attribution"));
    boxes[which].style.display = show ? "" : "none";
    if (!show) return;
    try {
      const { meta: got, buffers } = await fetchData({ kind: "values", which, version: meta.version });
      if (got.version !== metaOf(which).version) return; // a newer grid is on its way
      drawMap(which, meta, decode(buffers[0], got.dtype));
    } catch (e) { showError(e); }
  };
  const rehighlight = () => {
    for (const which of ["exact", "attribution"]) if (maps[which]) {
      const [r, c] = locate(metaOf(which)); maps[which].highlight(r, c);
    }
  };
  on(["exact_meta"], () => { load("exact"); if (model.get("attribution")) load("attribution"); });
  on(["attribution_meta", "attribution"], () => load("attribution"));
  on(["layer", "position", "head"], rehighlight);
  on(["compare"], () => { compare.textContent = model.get("compare") || ""; });

  // -- the clicked cell -----------------------------------------------------------------------
  const detail = h("div", { class: "wb-col", style: { marginTop: "6px" } });
  const shiftList = (title, items) => h("div", { class: "wb-col", style: { gap: "0" } },
    h("span", { class: "wb-muted" }, title),
    items.length ? null : h("span", { class: "wb-muted" }, "no token moved by 1e-4 or more"),
    ...items.map((it) => h("div", { class: "wb-row", style: { margin: "0", gap: "6px" } },
      h("span", { class: "wb-tok", style: { minWidth: "7em" } }, JSON.stringify(tokenText(it.token))),
      h("span", { class: "wb-muted" }, (it.delta >= 0 ? "+" : "") + fmt(it.delta)))));
  const syncCell = () => {
    const c = model.get("cell") || {};
    if (!c.label) { detail.replaceChildren(); return; }
    const base = c.direction === "noise" ? "clean" : "corrupted";
    const lines = [`${c.label}: ${c.metric} ${fmt(c.value)} (unpatched ${base} ${fmt(c.base_value)}, ` +
      `change ${c.change >= 0 ? "+" : ""}${fmt(c.change)}` +
      (c.normalized === null || c.normalized === undefined ? ")" : `; normalized ${fmt(c.normalized)})`)];
    detail.replaceChildren(h("div", {}, lines[0]),
      h("div", { class: "wb-row", style: { alignItems: "flex-start", gap: "24px" } },
        shiftList(`rose most (${c.by})`, c.rose || []), shiftList(`fell most (${c.by})`, c.fell || [])));
  };
  on(["cell"], syncCell);

  body.append(
    labelled("clean", clean, "72px"), labelled("corrupted", corrupted, "72px"), tokens, alignBox, aligned,
    h("div", { class: "wb-row" }, labelled("metric", metric.el), labelled("answer", answer), wrongBox),
    note,
    h("div", { class: "wb-row" }, labelled("site", site.el), index.el, direction.el, attrBtn),
    h("div", { class: "wb-row" }, runBtn, cancelBtn, bar, progressText, cost),
    h("div", { class: "wb-row", style: { alignItems: "flex-start", gap: "16px" } }, boxes.exact, boxes.attribution),
    compare, detail);
  body.append(suggestions);
  syncTokens(); syncRun(); syncCell(); syncSuggestions();
  compare.textContent = model.get("compare") || "";
  load("exact"); load("attribution");
}

export default { render };
