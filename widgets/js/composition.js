// ---- composition.js: Q/K/V composition scores, sender head rows x receiver head columns -------
// Python: widgets/composition.py. One fetch per result ({kind: "scores", version}): matrix [n, n]
// float16 and valid [n, n] uint8 as buffers, head labels as JSON. Threshold is a view setting.

function compArrays(meta, buffers) {
  const out = {};
  meta.arrays.forEach((a, i) => { out[a.name] = decode(buffers[i], a.dtype); });
  return out;
}

function render({ model, el }) {
  let view = null, hm = null;
  const ui = frame(model, el, "composition", { png: () => hm && hm.canvas });
  const fetchData = makeFetcher(model);
  const tip = tooltip(el);
  const live = !ui.isStatic;
  const commit = (name, value) => { model.set(name, value); model.save_changes(); };

  // -- controls ---------------------------------------------------------------------------------
  const kindBtns = ["q", "k", "v"].map((k) => h("button", {
    class: "wb-btn wb-comp-kind", "data-kind": k, title: k.toUpperCase() + "-composition",
    onclick: () => commit("kind", k),
  }, k.toUpperCase()));
  const baseBox = h("input", { type: "checkbox", class: "wb-comp-baseline" });
  baseBox.addEventListener("change", () => commit("baseline", baseBox.checked));
  const slider = h("input", { type: "range", class: "wb-comp-threshold", min: 0, max: 1, step: 0.001 });
  const thrText = h("span", { class: "wb-muted" });
  slider.addEventListener("input", () => commit("threshold", parseFloat(slider.value)));
  for (const c of [...kindBtns, baseBox]) c.disabled = !live;
  const note = h("div", { class: "wb-muted wb-comp-note" });
  const host = h("div", { class: "wb-comp-map" });
  ui.body.append(
    h("div", { class: "wb-row" }, h("span", { class: "wb-muted" }, "kind"), ...kindBtns,
      h("label", { class: "wb-muted", title: "subtract the mean score of random matrices of these shapes" },
        baseBox, " subtract random baseline"),
      h("span", { class: "wb-muted" }, "hide below"), slider, thrText),
    note, host);

  const syncControls = () => {
    kindBtns.forEach((b) => b.classList.toggle("wb-on", b.dataset.kind === model.get("kind")));
    baseBox.checked = !!model.get("baseline");
    slider.value = model.get("threshold");
    thrText.textContent = fmt(model.get("threshold"));
  };
  for (const k of ["kind", "baseline", "threshold"]) model.on("change:" + k, syncControls);
  syncControls();

  // -- drawing ----------------------------------------------------------------------------------
  const state = (i) => {
    if (!view.a.valid[i]) return "not a pair (the receiver must sit in a later layer)";
    const v = view.a.matrix[i];
    if (Number.isNaN(v)) return "undefined (a head with a zero circuit)";
    return v < model.get("threshold") ? "below threshold" : null;
  };

  const onHover = (r, c, ev) => {
    if (r < 0 || !view) { tip.hide(); return; }
    const i = r * view.n + c, why = state(i);
    const lines = [`${view.labels[r]} \u2192 ${view.labels[c]}   ${view.kind.toUpperCase()}-composition`];
    if (view.a.valid[i]) lines.push(`score ${fmt(view.a.matrix[i])}` + (view.baseline !== null ? ` (baseline ${fmt(view.baseline)} subtracted)` : ""));
    if (why) lines.push(why);
    tip.show(ev, lines);
  };

  const onClick = (r, c) => {
    if (!view || !view.a.valid[r * view.n + c]) return;  // blank: not a composition pair
    hm.highlight(r, c);
    if (live) model.send({ type: "action", name: "select", args: { sender: r, receiver: c } });
  };

  const markSelection = () => {
    if (!hm || !view) return;
    const heads = model.get("heads") || [];
    if (heads.length !== 2) { hm.highlight(-1, -1); return; }
    const [[l1, h1], [l2, h2]] = heads, H = view.nHeads;
    const ok = l1 < view.nLayers && l2 < view.nLayers && h1 < H && h2 < H;
    hm.highlight(ok ? l1 * H + h1 : -1, ok ? l2 * H + h2 : -1);
  };

  const draw = () => {
    if (!view) return;
    const n = view.n, thr = model.get("threshold"), values = new Float32Array(n * n);
    let hidden = 0, pairs = 0;
    for (let i = 0; i < n * n; i++) {
      const v = view.a.matrix[i];
      if (!view.a.valid[i]) { values[i] = NaN; continue; }
      pairs++;
      if (v < thr) { values[i] = NaN; hidden++; } else values[i] = v;
    }
    const base = view.baseline !== null;
    const opts = { rows: n, cols: n, values, kind: base ? "div" : "seq",
      vmin: base ? -view.absMax : 0, vmax: base ? view.absMax : view.hi, cell: 22,
      rowLabels: view.labels, colLabels: view.labels, onHover, onClick };
    if (hm) hm.draw(opts); else { hm = heatmap(opts); host.replaceChildren(hm.el); }
    note.textContent = `${view.kind.toUpperCase()}-composition, rows: sender heads, columns: receiver heads`
      + (base ? `  ·  random baseline ${fmt(view.baseline)} subtracted` : "")
      + (pairs ? `  ·  ${hidden} of ${pairs} pairs below ${fmt(thr)} hidden` : "  ·  no pairs: a single layer has no composition")
      + "  ·  click: select both heads";
    markSelection();
  };

  const load = async () => {
    const version = model.get("version");
    try {
      fetchData.clear();
      const { meta, buffers } = await fetchData({ kind: "scores", version });
      if (meta.version !== model.get("version") || meta.empty) return;
      const a = compArrays(meta, buffers), n = meta.labels.length;
      let lo = 0, hi = 0;
      for (let i = 0; i < n * n; i++) {
        const v = a.matrix[i];
        if (a.valid[i] && Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
      }
      view = { a, n, labels: meta.labels, kind: meta.kind, baseline: meta.baseline, nLayers: meta.n_layers,
        nHeads: meta.n_heads, hi: hi || 1, absMax: Math.max(-lo, hi) || 1 };
      slider.min = lo; slider.max = hi || 1; slider.step = ((hi || 1) - lo) / 200;
      slider.value = model.get("threshold");
      draw();
    } catch (e) { ui.showError(e); }
  };

  model.on("change:version", load);
  model.on("change:threshold", draw);
  model.on("change:heads", markSelection);
  load();
}

export default { render };
