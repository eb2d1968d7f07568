// ---- hook_picker.js: the model's hook points as a searchable tree with shapes and memory ------

function humanBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function matcher(query) {
  const q = query.trim().toLowerCase();
  if (!q) return () => true;
  if (q.includes("*")) {
    const re = new RegExp("^" + q.split("*").map((s) => s.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*") + "$");
    return (name) => re.test(name.toLowerCase());
  }
  return (name) => name.toLowerCase().includes(q);
}

function render({ model, el }) {
  const { body } = frame(model, el, "Hook picker");
  const prompt = h("input", { type: "text", placeholder: "prompt", style: { flex: "1", minWidth: "240px" } });
  const nTok = h("span", { class: "wb-muted" });
  const auto = h("input", { type: "checkbox" });
  const runBtn = h("button", { class: "wb-btn" }, "cache now");
  const search = h("input", { type: "text", placeholder: "search hooks (substring or glob: *.hook_pattern)", style: { width: "320px" } });
  const pickShown = h("button", { class: "wb-btn", title: "add every hook shown to the pick" }, "pick all shown");
  const clear = h("button", { class: "wb-btn" }, "clear pick");
  const summary = h("div", { class: "wb-muted" });
  const cachedEl = h("div", { class: "wb-col" });
  const treeBox = h("div", { class: "wb-hook-tree", style: { maxHeight: "360px", overflow: "auto", border: "1px solid #eee", padding: "4px" } });
  body.append(
    h("div", { class: "wb-row" }, prompt, nTok, h("label", {}, auto, " run on change"), runBtn),
    h("div", { class: "wb-row" }, search, pickShown, clear),
    treeBox, summary, cachedEl);

  prompt.addEventListener("change", () => { model.set("prompt", prompt.value); model.save_changes(); });
  auto.addEventListener("change", () => { model.set("auto_run", auto.checked); model.save_changes(); });
  runBtn.addEventListener("click", () => model.send({ type: "action", name: "run" }));
  const setHooks = (list) => { model.set("hooks", list); model.save_changes(); };
  const shown = () => {
    const ok = matcher(search.value);
    return model.get("tree").flatMap((g) => g.children.flatMap((c) => c.hooks.map((x) => x.name))).filter(ok);
  };
  pickShown.addEventListener("click", () => setHooks([...new Set([...model.get("hooks"), ...shown()])]));
  clear.addEventListener("click", () => setHooks([]));
  search.addEventListener("input", () => drawTree());

  function drawTree() {
    const picked = new Set(model.get("hooks"));
    const ok = matcher(search.value);
    const searching = search.value.trim() !== "";
    const groups = [];
    for (const g of model.get("tree")) {
      const comps = [];
      for (const c of g.children) {
        const rows = c.hooks.filter((x) => ok(x.name)).map((x) => {
          const box = h("input", { type: "checkbox" });
          box.checked = picked.has(x.name);
          box.addEventListener("change", () => {
            const now = model.get("hooks").filter((n) => n !== x.name);
            if (box.checked) now.push(x.name);
            setHooks(now);
          });
          return h("label", { class: "wb-hook-row", style: { display: "grid", gridTemplateColumns: "18px 300px 1fr 80px", gap: "4px" } },
            box, h("span", { class: "wb-tok" }, x.name), h("span", { class: "wb-muted" }, x.shape),
            h("span", { class: "wb-muted", style: { textAlign: "right" } }, humanBytes(x.bytes)));
        });
        if (rows.length) comps.push(h("div", { style: { marginLeft: "12px" } }, h("div", { class: "wb-muted" }, c.name), ...rows));
      }
      if (!comps.length) continue;
      const det = h("details", {}, h("summary", {}, g.name), ...comps);
      det.open = searching || groups.length === 1 || comps.some((d) => d.querySelector("input:checked"));
      groups.push(det);
    }
    treeBox.replaceChildren(...(groups.length ? groups : [h("div", { class: "wb-muted" }, "no hook matches")]));
  }

  function sync() {
    if (document.activeElement !== prompt) prompt.value = model.get("prompt");
    auto.checked = model.get("auto_run");
    nTok.textContent = model.get("n_tokens") + " tokens";
    const sizes = new Map();
    for (const g of model.get("tree")) for (const c of g.children) for (const x of c.hooks) sizes.set(x.name, x.bytes);
    const picked = model.get("hooks");
    const total = picked.reduce((s, n) => s + (sizes.get(n) || 0), 0);
    const free = model.get("free_bytes");
    summary.textContent = `${picked.length} hook(s) picked, ${humanBytes(total)} for this prompt (batch 1)`
      + (free >= 0 ? ` · ${humanBytes(free)} free on ${model.get("free_where")}` : "")
      + (free >= 0 && total > free ? " · too big: running it is refused" : "");
    summary.classList.toggle("wb-warn", free >= 0 && total > free);
    const cached = model.get("cached");
    cachedEl.replaceChildren(
      h("div", { class: "wb-muted" }, cached.length ? `cached (${cached.length}):` : "nothing cached yet"),
      ...cached.map((c) => h("div", { class: "wb-tok" }, `${c.name}  [${c.shape.join(", ")}]  ${humanBytes(c.bytes)}`)));
    drawTree();
  }
  for (const k of ["prompt", "auto_run", "n_tokens", "tree", "hooks", "cached", "free_bytes"]) model.on("change:" + k, sync);
  sync();
}

export default { render };
