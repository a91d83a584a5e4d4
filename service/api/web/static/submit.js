// The submit form: fields generated server-side from the spec's JSON schema; the server validates.
"use strict";

(() => {
  const { api, ApiError, report } = fmnist;
  const form = document.getElementById("submit-form");
  const defaults = JSON.parse(document.getElementById("spec-defaults").textContent);
  const presets = JSON.parse(document.getElementById("spec-presets").textContent);
  const fields = [...form.querySelectorAll(".field[data-kind]")];
  const presetSelect = document.getElementById("field-preset");

  // What the form starts from: the defaults, then the chosen preset's values.
  const baseline = () => ({ ...defaults, ...(presets[presetSelect.value] || {}) });

  function input(field) {
    return field.querySelector("input, select");
  }

  // The value as JSON would carry it; text the form cannot parse is sent as typed, for the server to refuse.
  function read(field) {
    const control = input(field);
    const raw = control.value.trim();
    switch (field.dataset.kind) {
      case "checkbox":
        return control.checked;
      case "integer":
      case "number":
        if (raw === "") return field.dataset.nullable === "true" ? null : raw;
        return Number.isFinite(Number(raw)) ? Number(raw) : raw;
      case "integer_list":
        if (raw === "" || raw === "[]") return [];
        return raw.replace(/^\[|\]$/g, "").split(/[\s,]+/).filter(Boolean).map((part) => (/^-?\d+$/.test(part) ? Number(part) : part));
      case "select":
        return raw === "" && field.dataset.nullable === "true" ? null : raw;
      default:
        if (raw === "") return null;
        try {
          return JSON.parse(raw);
        } catch {
          return raw;
        }
    }
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

  function fill() {
    const values = baseline();
    for (const field of fields) write(field, values[field.dataset.field]);
    clearErrors();
  }

  function clearErrors() {
    for (const node of form.querySelectorAll(".error")) {
      node.textContent = "";
      node.hidden = true;
    }
    for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  }

  // FastAPI's 422: one entry per problem, `loc` ["body", field, ...]. Rules that tie fields together
  // (nesterov needs momentum...) have no field of their own: they go above the button.
  function showErrors(error) {
    const general = [];
    const detail = Array.isArray(error.detail) ? error.detail : [];
    for (const problem of detail) {
      const [where, name, ...rest] = problem.loc || [];
      const slot = where === "body" && name !== undefined ? document.getElementById(`error-${name}`) : null;
      if (!slot) {
        general.push(problem.msg);
        continue;
      }
      const suffix = rest.length ? ` (item ${rest.join(".")})` : "";
      slot.textContent = [slot.textContent, `${problem.msg}${suffix}`].filter(Boolean).join("; ");
      slot.hidden = false;
      const control = input(slot.closest(".field"));
      control.setAttribute("aria-invalid", "true");
    }
    if (!detail.length) general.push(error.message);
    const node = document.getElementById("form-error");
    node.textContent = general.join("; ");
    node.hidden = general.length === 0;
    const first = form.querySelector("[aria-invalid]");
    if (first) first.focus();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const start = baseline();
    const body = {};
    if (presetSelect.value) body.preset = presetSelect.value;
    for (const field of fields) {
      const name = field.dataset.field;
      const value = read(field);
      if (JSON.stringify(value) !== JSON.stringify(start[name] ?? null)) body[name] = value;
    }
    const button = document.getElementById("submit-button");
    button.disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", json: body });
      location.assign(fmnist.href(`/jobs/${encodeURIComponent(job.id)}`));
    } catch (error) {
      if (error instanceof ApiError && error.status !== 401) showErrors(error);
      else report(error);
      button.disabled = false;
    }
  });

  presetSelect.addEventListener("change", fill);
  document.getElementById("reset-button").addEventListener("click", () => {
    presetSelect.value = "";
    fill();
  });
})();
