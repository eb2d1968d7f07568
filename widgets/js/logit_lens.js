// ---- logit_lens.js: residual site x position heatmap of the logit lens -----------------------
// Python: widgets/logit_lens.py. One fetch per result ({kind: "lens", version}); numbers arrive
// as typed buffers listed in meta.arrays, token strings as JSON and are drawn as canvas text.

const LENS_SITES = ["resid_pre", "resid_mid", "resid_post"];
const LENS_COLOUR = { top: "top-1 probability", target: "target probability", entropy: "entropy (nats)" };

function lensArrays(meta, buffers) {
  const out = {};
  meta.arrays.forEach((a, i) => { out[a.name] = decode(buffers[i], a.dtype); });
  return out;
}

function render({ model, el }) {
  let view = null, hm = null, picked = null;
  const ui = frame(model, el, "logit lens", { png: () => hm && hm.canvas });
  const fetchData = makeFetcher(model);
  const tip = tooltip(el);
  const live = !ui.isStatic;
  const commit = (name, value) => { model.set(name, value); model.save_changes(); };

  // -- controls ---------------------------------------------------------------------------------
  const promptIn = h("input", { type: "text", class: "wb-lens-prompt", size: 50, placeholder: "prompt",
    style: { flex: "1", minWidth: "320px" } });
  promptIn.addEventListener("change", () => commit("prompt", promptIn.value));
  const siteBtns = LENS_SITES.map((s) => h("button", {
    class: "wb-btn wb-lens-site", "data-site": s, title: "show the " + s + " rows",
    onclick: () => {
      const cur = model.get("sites") || [];
      const next = LENS_SITES.filter((x) => (x === s ? !cur.includes(x) : cur.includes(x)));
      if (next.length) commit("sites", next);
    },
  }, s.replace("resid_", "")));
  const targetIn = h("input", { type: "text", class: "wb-lens-target", size: 12,
    placeholder: "target token", title: "one token of the model (mind the leading space); empty: none" });
  targetIn.addEventListener("change", () => {
    commit("target", targetIn.value);
    if (targetIn.value && model.get("colour_by") === "top") commit("colour_by", "target");
  });
  const kIn = h("input", { type: "number", class: "wb-lens-k", min: 1, max: 50, style: { width: "3.5em" },
    title: "top tokens per cell (hover)" });
  kIn.addEventListener("change", () => commit("k", parseInt(kIn.value, 10) || 1));
  const colourSel = h("select", { class: "wb-lens-colour" },
    Object.entries(LENS_COLOUR).map(([v, t]) => h("option", { value: v }, t)));
  colourSel.addEventListener("change", () => commit("colour_by", colourSel.value));
  for (const c of [promptIn, targetIn, kIn, ...siteBtns]) c.disabled = !live;
  const note = h("div", { class: "wb-muted wb-lens-note" });
  const host = h("div", { class: "wb-lens-map" });
  ui.body.append(
    h("div", { class: "wb-row" }, promptIn),
    h("div", { class: "wb-row" }, h("span", { class: "wb-muted" }, "sites"), ...siteBtns,
      h("span", { class: "wb-muted" }, "target"), targetIn, h("span", { class: "wb-muted" }, "k"), kIn,
      h("span", { class: "wb-muted" }, "colour"), colourSel),
    note, host);

  const syncControls = () => {
    if (document.activeElement !== promptIn) promptIn.value = model.get("prompt") || "";
    if (document.activeElement !== targetIn) targetIn.value = model.get("target") || "";
    kIn.value = model.get("k");
    colourSel.value = model.get("colour_by");
    const sites = model.get("sites") || [];
    siteBtns.forEach((b) => b.classList.toggle("wb-on", sites.includes(b.dataset.site)));
  };
  for (const k of ["prompt", "target", "k", "colour_by", "sites"]) model.on("change:" + k, syncControls);
  syncControls();

  // -- drawing ----------------------------------------------------------------------------------
  const colourValues = () => {
    const [R, P, K] = view.shape;
    let by = model.get("colour_by");
    if (by === "target" && !view.a.target_prob) by = "top";
    if (by === "entropy") return { by, values: view.a.entropy, vmin: 0, vmax: undefined };
    if (by === "target") return { by, values: view.a.target_prob, vmin: 0, vmax: 1 };
    const top1 = new Float32Array(R * P);
    for (let i = 0; i < R * P; i++) top1[i] = view.a.top_probs[i * K];
    return { by, values: top1, vmin: 0, vmax: 1 };
  };

  const onHover = (r, c, ev) => {
    if (r < 0 || !view) { tip.hide(); return; }
    const [, P, K] = view.shape, a = view.a, i = r * P + c;
    const lines = [`${view.rows[r]}  pos ${a.positions[c]}  '${view.strTokens[c]}'`];
    for (let j = 0; j < K; j++) lines.push(`${j + 1}. '${view.topStrs[r][c][j]}'  ${fmt(a.top_probs[i * K + j])}`);
    lines.push(`entropy ${fmt(a.entropy[i])} nats`);
    if (a.target_prob) lines.push(`target '${view.targetStr}'  p ${fmt(a.target_prob[i])}  rank ${a.target_rank[i]}`);
    tip.show(ev, lines);
  };

  const onClick = (r, c) => {
    picked = [r, c];
    hm.highlight(r, c);
    if (live) model.send({ type: "action", name: "select", args: { row: r, col: c } });
  };

  // the cell of the shared selection: the clicked row if it is in that layer, else the layer's last row
  const markSelection = () => {
    if (!hm || !view) return;
    const layer = model.get("layer"), col = Array.from(view.a.positions).indexOf(model.get("position"));
    let row = picked && view.a.row_layers[picked[0]] === layer ? picked[0] : -1;
    if (row < 0) row = Array.from(view.a.row_layers).lastIndexOf(layer);
    hm.highlight(col >= 0 ? row : -1, col);
  };

  const draw = () => {
    if (!view) return;
    const [R, P] = view.shape;
    const { by, values, vmin, vmax } = colourValues();
    // long prompts scroll sideways rather than shrink the cells past their top-1 text
    const opts = { rows: R, cols: P, values, kind: "seq", vmin, vmax, cell: 40, minW: 28, minH: 14,
      rowLabels: view.rows, colLabels: view.strTokens,
      cellText: (r, c) => view.topStrs[r][c][0], onHover, onClick };
    if (hm) hm.draw(opts); else { hm = heatmap(opts); host.replaceChildren(hm.el); }
    const wanted = model.get("colour_by");
    note.textContent = `colour: ${LENS_COLOUR[by]}` + (view.targetStr !== null ? `  ·  target '${tokenText(view.targetStr)}'` : "")
      + (wanted === "target" && by !== "target" ? "  ·  no target token set: showing top-1 probability" : "")
      + "  ·  cell text: top-1 token  ·  hover: top-k  ·  click: select layer and position";
    markSelection();
  };

  const placeholder = (text) => {
    view = null; hm = null; picked = null; note.textContent = "";
    host.replaceChildren(h("div", { class: "wb-muted" }, text));
  };

  const load = async () => {
    const version = model.get("version");
    if (!model.get("prompt")) { placeholder("enter a prompt to run the logit lens"); return; }
    try {
      fetchData.clear();
      const { meta, buffers } = await fetchData({ kind: "lens", version });
      if (meta.version !== model.get("version")) return;  // a newer result is on its way
      if (meta.empty) { placeholder("no result yet (see the error above)"); return; }
      const a = lensArrays(meta, buffers);
      const shape = meta.arrays.find((x) => x.name === "top_probs").shape;
      if (picked && (picked[0] >= shape[0] || picked[1] >= shape[1])) picked = null;
      view = { a, shape, rows: meta.rows, strTokens: meta.str_tokens, topStrs: meta.top_strs,
        targetStr: meta.target_str };
      draw();
    } catch (e) { ui.showError(e); }
  };

  model.on("change:version", load);
  model.on("change:colour_by", draw);
  model.on("change:layer", markSelection);
  model.on("change:position", markSelection);
  load();
}

export default { render };
