// The submit page: a job, a sweep or a study. The spec's fields are generated server-side from its JSON schema;
// the grid and the search space are rows the user adds. The server validates everything; its 422s land beside
// the field, row or setting they name.
"use strict";

(() => {
  const { api, ApiError, el, report } = fmnist;
  const form = document.getElementById("submit-form");
  const defaults = JSON.parse(document.getElementById("spec-defaults").textContent);
  const presets = JSON.parse(document.getElementById("spec-presets").textContent);
  const fields = [...form.querySelectorAll(".field[data-kind]")];
  const fieldByName = new Map(fields.map((field) => [field.dataset.field, field]));
  const presetSelect = document.getElementById("field-preset");
  const gridRows = document.getElementById("grid-rows");
  const spaceRows = document.getElementById("space-rows");
  const button = document.getElementById("submit-button");
  const MODES = ["job", "sweep", "study"];
  const BUTTON_TEXT = { job: "Submit job", sweep: "Submit sweep", study: "Start study" };
  const NUMERIC = new Set(["integer", "number"]);

  const mode = () => form.dataset.mode;

  // The spec's defaults in this mode: a study holds out validation data unless told otherwise.
  function modeDefaults(forMode = mode()) {
    return forMode === "study" ? { ...defaults, val_fraction: Number(form.dataset.studyValFraction) } : defaults;
  }

  // What the form starts from, and what is not sent: the defaults, then the chosen preset's values.
  function baseline(forMode = mode()) {
    const values = { ...defaults, ...(presets[presetSelect.value] || {}) };
    if (forMode === "study") values.val_fraction = Number(form.dataset.studyValFraction);
    return values;
  }

  function input(field) {
    return field.querySelector("input, select");
  }

  const label = (name) => fieldByName.get(name)?.querySelector(".label-text").textContent || name;

  // A list field's text: "256" or "1024, 512" or "[1024, 512]"; words the form cannot parse go as typed.
  function parseList(raw) {
    if (raw === "" || raw === "[]") return [];
    return raw.replace(/^\[|\]$/g, "").split(/[\s,]+/).filter(Boolean).map((part) => (/^-?\d+$/.test(part) ? Number(part) : part));
  }

  // One value typed as text, for a field of this kind; text the form cannot parse is sent as typed, for the
  // server to refuse with its own message.
  function parseValue(field, raw) {
    switch (field.dataset.kind) {
      case "checkbox":
        if (/^(true|on|yes)$/i.test(raw)) return true;
        if (/^(false|off|no)$/i.test(raw)) return false;
        return raw;
      case "integer":
      case "number":
        if (raw === "" || /^none$/i.test(raw)) return field.dataset.nullable === "true" ? null : raw;
        return Number.isFinite(Number(raw)) ? Number(raw) : raw;
      case "integer_list":
        return parseList(raw);
      case "select":
        return (raw === "" || /^none$/i.test(raw)) && field.dataset.nullable === "true" ? null : raw;
      default:
        if (raw === "") return null;
        try {
          return JSON.parse(raw);
        } catch {
          return raw;
        }
    }
  }

  // A grid's values or a study's choices: commas between values; semicolons between hidden-layer lists.
  function parseValues(field, text) {
    const raw = text.trim();
    if (raw === "") return [];
    if (field.dataset.kind === "integer_list") {
      try {
        const parsed = JSON.parse(raw);
        if (Array.isArray(parsed) && parsed.every(Array.isArray)) return parsed;
      } catch {
        // not JSON: semicolons between lists
      }
      return raw.split(";").map((part) => parseList(part.trim()));
    }
    if (field.dataset.kind === "json") {
      try {
        return JSON.parse(`[${raw}]`);
      } catch {
        return [raw];
      }
    }
    return raw.split(/\s*,\s*|\s+/).filter(Boolean).map((part) => parseValue(field, part));
  }

  function placeholderFor(field) {
    switch (field.dataset.kind) {
      case "integer_list":
        return "e.g. 256; 1024, 512; 256, 256";
      case "select":
        return `e.g. ${field.dataset.options.split(",").slice(0, 2).join(", ")}`;
      case "checkbox":
        return "false, true";
      case "integer":
        return "e.g. 10, 20";
      default:
        return "e.g. 0.05, 0.1, 0.2";
    }
  }

  function read(field) {
    const control = input(field);
    return field.dataset.kind === "checkbox" ? control.checked : parseValue(field, control.value.trim());
  }

  function write(field, value) {
    const control = input(field);
    switch (field.dataset.kind) {
      case "checkbox":
        control.checked = Boolean(value);
        break;
      case "integer_list":
        control.value = (value || []).join(", ");
        break;
      case "json":
        control.value = value === null ? "" : JSON.stringify(value);
        break;
      default:
        control.value = value === null || value === undefined ? "" : String(value);
    }
  }

  const same = (a, b) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);

  // --- the spec's sections: each says how many of its fields are off their default; a preset opens them ---

  // The fields that differ from `start` (the baseline: what is sent), leaving out those the grid or space sets.
  function changedFields(start = baseline()) {
    return fields.filter((field) => !field.classList.contains("varied") && !same(read(field), start[field.dataset.field]));
  }

  function markSections({ open = false } = {}) {
    const changed = new Set(changedFields(modeDefaults()));
    for (const section of form.querySelectorAll(".form-section")) {
      const count = [...section.querySelectorAll(".field[data-kind]")].filter((field) => changed.has(field)).length;
      const badge = section.querySelector(".section-changed");
      badge.textContent = `${count} changed`;
      badge.hidden = count === 0;
      if (open && count > 0) section.open = true;
    }
    describe();
  }

  // --- the grid's and the space's rows ---

  function fieldSelect(selected) {
    const select = el("select", { class: "param-field", "aria-label": "Spec field" });
    for (const field of fields) {
      const name = field.dataset.field;
      select.append(el("option", { value: name }, `${label(name)} (${name})`));
    }
    select.value = selected;
    return select;
  }

  // The first spec field no row of this list uses yet.
  function unusedField(rows) {
    const used = new Set([...rows.children].map((row) => row.dataset.param));
    return fields.map((field) => field.dataset.field).find((name) => !used.has(name)) || fields[0].dataset.field;
  }

  function rowShell(rows, name, build) {
    const row = el("div", { class: "param-row", "data-param": name });
    const select = fieldSelect(name);
    const remove = el("button", { type: "button", class: "secondary remove", "aria-label": "Remove this row" }, "✕");
    const error = el("p", { class: "error", hidden: "" });
    const rebuild = () => {
      row.dataset.param = select.value;
      for (const node of [...row.children]) if (![select, remove, error].includes(node)) node.remove();
      remove.before(...build(fieldByName.get(select.value)));
      markVaried();
    };
    select.addEventListener("change", rebuild);
    remove.addEventListener("click", () => {
      row.remove();
      markVaried();
    });
    row.append(select, remove, error);
    rows.append(row);
    rebuild();
    return row;
  }

  function addGridRow(name = unusedField(gridRows)) {
    return rowShell(gridRows, name, (field) => [
      el("input", { type: "text", class: "param-values", "aria-label": "Values", placeholder: placeholderFor(field) }),
    ]);
  }

  function addSpaceRow(name = unusedField(spaceRows)) {
    return rowShell(spaceRows, name, (field) => {
      const numeric = NUMERIC.has(field.dataset.kind);
      const kind = el("select", { class: "param-kind", "aria-label": "Range or choices" });
      if (numeric) kind.append(el("option", { value: "range" }, "range"));
      kind.append(el("option", { value: "choices" }, "choices"));
      const range = el(
        "span",
        { class: "range-inputs" },
        el("input", { type: "number", step: "any", class: "param-bound", "data-bound": "low", placeholder: "low", "aria-label": "Low" }),
        el("input", { type: "number", step: "any", class: "param-bound", "data-bound": "high", placeholder: "high", "aria-label": "High" }),
        el("label", {}, el("input", { type: "checkbox", class: "param-log" }), " log scale"),
        el("input", { type: "number", step: "any", class: "param-bound", "data-bound": "step", placeholder: "step (any)", "aria-label": "Step" }),
      );
      const choices = el("input", { type: "text", class: "param-values", "aria-label": "Choices", placeholder: placeholderFor(field) });
      const show = () => {
        range.hidden = kind.value !== "range";
        choices.hidden = kind.value !== "choices";
      };
      kind.addEventListener("change", show);
      show();
      return [kind, range, choices];
    });
  }

  const rowsOf = (container) => [...container.querySelectorAll(".param-row")];

  function gridValue() {
    const grid = {};
    for (const row of rowsOf(gridRows)) grid[row.dataset.param] = parseValues(fieldByName.get(row.dataset.param), row.querySelector(".param-values").value);
    return grid;
  }

  function number(control) {
    const raw = control.value.trim();
    return raw === "" ? undefined : Number.isFinite(Number(raw)) ? Number(raw) : raw;
  }

  function spaceValue() {
    const space = {};
    for (const row of rowsOf(spaceRows)) {
      const field = fieldByName.get(row.dataset.param);
      if (row.querySelector(".param-kind").value === "choices") {
        space[row.dataset.param] = { choices: parseValues(field, row.querySelector(".param-values").value) };
        continue;
      }
      const param = {};
      for (const control of row.querySelectorAll("[data-bound]")) {
        const value = number(control);
        if (value !== undefined) param[control.dataset.bound] = value;
      }
      if (row.querySelector(".param-log").checked) param.log = true;
      space[row.dataset.param] = param;
    }
    return space;
  }

  // A field the grid or the space sets is no part of the base: its input is disabled while the row exists.
  function markVaried() {
    const rows = mode() === "sweep" ? gridRows : mode() === "study" ? spaceRows : null;
    const varied = new Set(rows ? rowsOf(rows).map((row) => row.dataset.param) : []);
    for (const field of fields) {
      const on = varied.has(field.dataset.field);
      field.classList.toggle("varied", on);
      input(field).disabled = on;
      field.querySelector(".varied-note").hidden = !on;
    }
    markSections();
  }

  // --- what is sent ---

  function baseBody() {
    const body = {};
    if (presetSelect.value) body.preset = presetSelect.value;
    for (const field of changedFields()) body[field.dataset.field] = read(field);
    return body;
  }

  function studyBody() {
    const body = { base: baseBody(), space: spaceValue() };
    const sampler = document.getElementById("study-sampler").value;
    const pruner = document.getElementById("study-pruner").value;
    if (sampler) body.sampler = sampler;
    if (pruner) body.pruner = pruner;
    for (const name of ["trials", "max_concurrent", "seed"]) {
      const value = number(document.getElementById(`study-${name}`));
      if (value !== undefined) body[name] = value;
    }
    return body;
  }

  // The side box's line: what the button will submit.
  function describe() {
    const changed = changedFields().length;
    const fieldsText = `${changed} field${changed === 1 ? "" : "s"} changed from ${presetSelect.value || "the defaults"}`;
    let text = fieldsText;
    if (mode() === "sweep") {
      const sizes = Object.values(gridValue()).map((values) => values.length);
      const points = sizes.length ? sizes.reduce((a, b) => a * b, 1) : 0;
      text = `${points} job${points === 1 ? "" : "s"} (${sizes.join(" × ") || "no grid yet"}); base: ${fieldsText}`;
    } else if (mode() === "study") {
      const count = rowsOf(spaceRows).length;
      text = `${count} parameter${count === 1 ? "" : "s"} searched; base: ${fieldsText}`;
    }
    document.getElementById("submit-summary").textContent = text;
  }

  // --- errors ---

  function clearErrors() {
    for (const node of form.querySelectorAll(".error")) {
      node.textContent = "";
      node.hidden = true;
    }
    for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  }

  // The rest of a 422's `loc` in words, counted from 1 as people count: ["hidden_layers", 1] is item 2.
  function where(rest) {
    const words = [];
    for (let i = 0; i < rest.length; i += 1) {
      const part = rest[i];
      if (typeof part === "number") words.push(`${rest[i - 1] === "choices" ? "choice" : "item"} ${part + 1}`);
      else if (part !== "choices") words.push(part === "when" && i + 1 < rest.length ? `when ${rest[++i]}` : part);
    }
    return words.join(", ");
  }

  // Shows the message in its slot (opening a folded section) and returns true: the error is placed.
  function put(slot, text, control) {
    slot.textContent = [slot.textContent, text].filter(Boolean).join("; ");
    slot.hidden = false;
    if (control) control.setAttribute("aria-invalid", "true");
    const section = slot.closest(".form-section");
    if (section) section.open = true;
    return true;
  }

  function fieldError(name, msg, rest, extra = "") {
    const field = fieldByName.get(name) || (name === "preset" ? presetSelect.closest(".field") : null);
    if (!field) return false;
    const suffix = [where(rest), extra].filter(Boolean).join(", ");
    return put(field.querySelector(".error"), suffix ? `${msg} (${suffix})` : msg, input(field));
  }

  function rowError(rows, name, msg, rest, extra = "") {
    const row = rowsOf(rows).find((candidate) => candidate.dataset.param === name);
    if (!row) return false;
    const suffix = [where(rest), extra].filter(Boolean).join(", ");
    const control =
      row.querySelector(`[data-bound="${rest[0]}"]`) || row.querySelector(".param-values:not([hidden])") || row.querySelector(".param-field");
    return put(row.querySelector(".error"), suffix ? `${msg} (${suffix})` : msg, control);
  }

  // Grid point `index` (from 0, as the server counts) in words, counted from 1, with its values: the server
  // expands the grid as itertools.product does, the last field varying fastest.
  function gridPoint(index) {
    const grid = gridValue();
    const values = [];
    let rest = index;
    for (const name of Object.keys(grid).reverse()) {
      const options = grid[name];
      if (!options.length) return `grid point ${index + 1}`;
      values.unshift(`${name} ${JSON.stringify(options[rest % options.length])}`);
      rest = Math.floor(rest / options.length);
    }
    return `grid point ${index + 1}: ${values.join(", ")}`;
  }

  // FastAPI's 422: one entry per problem, `loc` ["body", ...]. A job's fields are at ["body", name]; a sweep's
  // and a study's base at ["body", "base", name], the grid's points at ["body", "grid", index, name], the space
  // at ["body", "space", name, ...]. Rules that tie fields together have no field: they go above the button.
  function placeError(problem) {
    const [origin, ...loc] = problem.loc || [];
    if (origin !== "body" || !loc.length) return false;
    const [head, ...rest] = loc;
    if (mode() === "job") return fieldError(head, problem.msg, rest);
    if (head === "base" && rest.length) return fieldError(rest[0], problem.msg, rest.slice(1));
    if (mode() === "sweep" && head === "grid") {
      if (!rest.length) return put(document.getElementById("error-grid"), problem.msg);
      if (typeof rest[0] !== "number") return rowError(gridRows, rest[0], problem.msg, rest.slice(1));
      // A grid point: its index counted from 1; the field it names is a grid row or a base field.
      const point = gridPoint(rest[0]);
      const [name, ...inner] = rest.slice(1);
      if (name === undefined) return false;
      return rowError(gridRows, name, problem.msg, inner, point) || fieldError(name, problem.msg, inner, point);
    }
    if (mode() === "study") {
      if (head === "space") {
        if (!rest.length) return put(document.getElementById("error-space"), problem.msg);
        return rowError(spaceRows, rest[0], problem.msg, rest.slice(1));
      }
      const slot = document.getElementById(`error-study-${head}`);
      if (slot) return put(slot, rest.length ? `${problem.msg} (${where(rest)})` : problem.msg, document.getElementById(`study-${head}`));
    }
    return false;
  }

  function generalText(problem) {
    const [origin, ...loc] = problem.loc || [];
    if (origin === "body" && loc[0] === "grid" && typeof loc[1] === "number") return `${gridPoint(loc[1])}: ${problem.msg}`;
    return problem.msg;
  }

  function showErrors(error) {
    const general = [];
    const detail = Array.isArray(error.detail) ? error.detail : [];
    for (const problem of detail) if (!placeError(problem)) general.push(generalText(problem));
    if (!detail.length) general.push(error.message);
    const node = document.getElementById("form-error");
    node.textContent = general.join("\n");
    node.hidden = general.length === 0;
    const first = form.querySelector("[aria-invalid]");
    if (first) first.focus();
  }

  // --- the mode, the preset, the buttons ---

  function setMode(next, { push = true } = {}) {
    const previous = mode();
    // A value still at the old mode's start (val_fraction) moves to the new mode's start.
    const before = baseline(previous);
    const after = baseline(next);
    form.dataset.mode = next;
    for (const field of fields) {
      const name = field.dataset.field;
      if (!same(before[name], after[name]) && same(read(field), before[name])) write(field, after[name]);
    }
    for (const tab of document.querySelectorAll(".mode-tabs [data-mode]")) tab.setAttribute("aria-selected", String(tab.dataset.mode === next));
    for (const node of document.querySelectorAll("[data-for]")) node.hidden = !node.dataset.for.split(" ").includes(next);
    button.textContent = BUTTON_TEXT[next];
    if (next === "sweep" && !rowsOf(gridRows).length) addGridRow("lr");
    if (next === "study" && !rowsOf(spaceRows).length) addSpaceRow("lr");
    if (push && location.hash !== `#${next}`) history.replaceState(null, "", next === "job" ? location.pathname : `#${next}`);
    clearErrors();
    markVaried();
  }

  function fill() {
    const values = baseline();
    for (const field of fields) write(field, values[field.dataset.field]);
    clearErrors();
    markSections({ open: true });
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const current = mode();
    const [path, body, page] = {
      job: () => ["/v1/jobs", baseBody(), (made) => `/jobs/${encodeURIComponent(made.id)}`],
      sweep: () => ["/v1/sweeps", { base: baseBody(), grid: gridValue() }, (made) => `/sweeps/${encodeURIComponent(made.id)}`],
      study: () => ["/v1/studies", studyBody(), (made) => `/studies/${encodeURIComponent(made.id)}`],
    }[current]();
    button.disabled = true;
    try {
      const made = await api(path, { method: "POST", json: body });
      location.assign(fmnist.href(page(made)));
    } catch (error) {
      if (error instanceof ApiError && error.status !== 401) showErrors(error);
      else report(error);
      button.disabled = false;
    }
  });

  form.addEventListener("input", () => markSections());
  form.addEventListener("change", () => markSections());
  presetSelect.addEventListener("change", fill);
  document.getElementById("reset-button").addEventListener("click", () => {
    presetSelect.value = "";
    fill();
  });
  document.getElementById("grid-add").addEventListener("click", () => addGridRow().querySelector(".param-field").focus());
  document.getElementById("space-add").addEventListener("click", () => addSpaceRow().querySelector(".param-field").focus());
  for (const tab of document.querySelectorAll(".mode-tabs [data-mode]")) tab.addEventListener("click", () => setMode(tab.dataset.mode));

  const initial = location.hash.slice(1);
  setMode(MODES.includes(initial) ? initial : "job", { push: false });
})();
