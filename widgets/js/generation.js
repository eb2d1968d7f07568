// ---- generation.js: streamed tokens, click one for its step's logit lens and attention ------------
// Python: widgets/generation.py. Tokens arrive as the `generated` trait grows (one per step);
// a click sets `picked`; Python answers with `step_view` (the lens as JSON) and the attention
// row is fetched as a float16 buffer ({kind: "step_attention", index, layer}).

function render({ model, el }) {
  let hm = null;
  const ui = frame(model, el, "generation", { png: () => hm && hm.canvas });
  const fetchData = makeFetcher(model);
  const live = !ui.isStatic;
  const commit = (name, value) => { model.set(name, value); model.save_changes(); };

  // -- controls ---------------------------------------------------------------------------------
  const promptIn = h("input", { type: "text", class: "wb-gen-prompt", placeholder: "prompt",
    style: { flex: "1", minWidth: "320px" } });
  promptIn.addEventListener("change", () => commit("prompt", promptIn.value));
  const nIn = h("input", { type: "number", class: "wb-gen-n", min: 1, max: 512, style: { width: "4em" },
    title: "new tokens at most" });
  nIn.addEventListener("change", () => commit("max_new_tokens", parseInt(nIn.value, 10) || 1));
  const sampleIn = h("input", { type: "checkbox", class: "wb-gen-sample", title: "sample instead of greedy" });
  sampleIn.addEventListener("change", () => commit("do_sample", sampleIn.checked));
  const tempIn = h("input", { type: "number", class: "wb-gen-temp", min: 0.05, step: 0.05, style: { width: "4.5em" },
    title: "temperature (sampling only)" });
  tempIn.addEventListener("change", () => commit("temperature", parseFloat(tempIn.value) || 1));
  const goBtn = h("button", { class: "wb-btn wb-gen-go", onclick: () => model.send({ type: "action", name: "generate" }) }, "generate");
  const stopBtn = h("button", { class: "wb-btn wb-gen-cancel", onclick: () => model.send({ type: "action", name: "cancel" }) }, "cancel");

  const layerSel = h("select", { class: "wb-gen-steer-layer", title: "add the steering vector to this layer's resid_post" });
  layerSel.addEventListener("change", () => commit("steer_layer", parseInt(layerSel.value, 10)));
  const posIn = h("input", { type: "text", class: "wb-gen-pos", size: 24, placeholder: "towards: prompts | separated" });
  posIn.addEventListener("change", () => commit("steer_positive", posIn.value));
  const negIn = h("input", { type: "text", class: "wb-gen-neg", size: 24, placeholder: "away from: prompts | separated" });
  negIn.addEventListener("change", () => commit("steer_negative", negIn.value));
  const scaleIn = h("input", { type: "range", class: "wb-gen-scale", min: -8, max: 8, step: 0.5 });
  const scaleOut = h("span", { class: "wb-gen-scale-value wb-muted" });
  scaleIn.addEventListener("input", () => { scaleOut.textContent = "scale " + scaleIn.value; });
  scaleIn.addEventListener("change", () => commit("steer_scale", parseFloat(scaleIn.value)));
  for (const c of [promptIn, nIn, sampleIn, tempIn, goBtn, stopBtn, layerSel, posIn, negIn, scaleIn]) c.disabled = !live;

  const strip = h("div", { class: "wb-gen-text" });
  const finish = h("div", { class: "wb-muted wb-gen-finish" });
  const stepHead = h("div", { class: "wb-gen-step-head" });
  const lensBox = h("div", { class: "wb-gen-lens" });
  const attnLayer = h("select", { class: "wb-gen-attn-layer", title: "attention of this layer" });
  attnLayer.addEventListener("change", () => commit("layer", parseInt(attnLayer.value, 10)));
  const attnHost = h("div", { class: "wb-gen-attn" });
  const stepBox = h("div", { class: "wb-gen-step" }, stepHead, lensBox,
    h("div", { class: "wb-row" }, h("span", { class: "wb-muted" }, "attention of the step's position, layer"), attnLayer),
    attnHost);
  ui.body.append(
    h("div", { class: "wb-row" }, promptIn),
    h("div", { class: "wb-row" }, h("span", { class: "wb-muted" }, "new tokens"), nIn,
      h("label", {}, sampleIn, " sample"), h("span", { class: "wb-muted" }, "temperature"), tempIn, goBtn, stopBtn),
    h("div", { class: "wb-row" }, h("span", { class: "wb-muted" }, "steer at layer"), layerSel, posIn, negIn,
      scaleIn, scaleOut),
    strip, finish, stepBox);

  const syncControls = () => {
    if (document.activeElement !== promptIn) promptIn.value = model.get("prompt") || "";
    nIn.value = model.get("max_new_tokens");
    sampleIn.checked = !!model.get("do_sample");
    tempIn.value = model.get("temperature");
    tempIn.disabled = !live || !model.get("do_sample");
    const n = model.get("n_layers") || 0;
    if (layerSel.options.length !== n + 1) {
      layerSel.replaceChildren(h("option", { value: -1 }, "off"),
        ...Array.from({ length: n }, (_, i) => h("option", { value: i }, String(i))));
      attnLayer.replaceChildren(...Array.from({ length: n }, (_, i) => h("option", { value: i }, String(i))));
    }
    layerSel.value = String(model.get("steer_layer"));
    attnLayer.value = String(model.get("layer"));
    if (document.activeElement !== posIn) posIn.value = model.get("steer_positive") || "";
    if (document.activeElement !== negIn) negIn.value = model.get("steer_negative") || "";
    scaleIn.value = model.get("steer_scale");
    scaleOut.textContent = "scale " + model.get("steer_scale");
    const running = !!model.get("running");
    goBtn.disabled = !live || running;
    stopBtn.disabled = !live || !running;
  };
  for (const k of ["prompt", "max_new_tokens", "do_sample", "temperature", "n_layers", "steer_layer",
    "steer_positive", "steer_negative", "steer_scale", "layer", "running"]) model.on("change:" + k, syncControls);
  syncControls();

  // -- the streamed text ---------------------------------------------------------------------------
  const drawText = () => {
    const picked = model.get("picked");
    const prompt = (model.get("prompt_tokens") || []).map((t) => h("span", { class: "wb-tok wb-gen-prompt-tok" }, tokenText(t)));
    const gen = (model.get("generated") || []).map((t, i) => h("span", {
      class: "wb-tok wb-gen-tok" + (i === picked ? " wb-on" : ""), "data-i": i, title: "click: why this token",
      onclick: () => { if (live) commit("picked", i); },
    }, tokenText(t)));
    strip.replaceChildren(...prompt, ...gen);
    const why = model.get("finish");
    finish.textContent = gen.length ? `${gen.length} new tokens` + (why ? ` · stopped: ${why}` : " …") : "";
  };
  for (const k of ["prompt_tokens", "generated", "picked", "finish"]) model.on("change:" + k, drawText);
  drawText();

  // -- the picked step -----------------------------------------------------------------------------
  const drawStep = async () => {
    const v = model.get("step_view") || {};
    if (v.index === undefined) {
      stepHead.textContent = "click a generated token to see the step that chose it";
      lensBox.replaceChildren(); attnHost.replaceChildren(); hm = null;
      return;
    }
    stepHead.textContent = `token ${v.index}: '${tokenText(v.token)}', chosen at position ${v.position - 1} ('${tokenText(v.query)}')`;
    const rows = v.lens.map((r) => h("tr", {}, h("td", { class: "wb-muted" }, `L${r.layer}`),
      ...r.top.map(([s, p]) => h("td", { class: "wb-gen-cand" + (s === v.token ? " wb-on" : "") },
        h("span", { class: "wb-tok" }, tokenText(s)), h("span", { class: "wb-muted" }, " " + fmt(p))))));
    lensBox.replaceChildren(h("div", { class: "wb-muted" }, "logit lens of that position (resid_post; top tokens)"),
      h("table", { class: "wb-gen-lens-table" }, h("tbody", {}, ...rows)));
    try {
      const { meta, buffers } = await fetchData({ kind: "step_attention", index: v.index, layer: v.layer, run: v.run });
      if (meta.error) { ui.showError(meta.error); return; }
      const [H, K] = meta.shape;
      const opts = { rows: H, cols: K, values: decode(buffers[0], meta.dtype), kind: "seq", vmin: 0, vmax: 1, cell: 18,
        rowLabels: Array.from({ length: H }, (_, i) => `head ${i}`), colLabels: v.keys };
      if (hm) hm.draw(opts); else { hm = heatmap(opts); attnHost.replaceChildren(hm.el); }
    } catch (e) { ui.showError(e); }
  };
  model.on("change:step_view", drawStep);
  drawStep();
}

export default { render };
