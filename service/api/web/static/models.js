// The registry: models with their aliases; set, move and remove aliases, delete models, download files.
// Each row shows its one frequent action (Predict); the others are in the row's "More" menu.
"use strict";

(() => {
  const { api, el, download, loadImage, shortId, percent, bytes, when, report, summary } = fmnist;
  const message = document.getElementById("models-message");
  const nameInput = document.getElementById("alias-name");
  const select = document.getElementById("alias-model");
  let aliases = new Map(); // alias name -> the model id it points at
  let chosenByUser = false; // a model picked in the list outlives a refresh; the default follows the alias

  const say = (text) => { message.textContent = text; };
  const act = (work) => async () => {
    try {
      await work();
      await refresh();
    } catch (error) {
      say("");
      report(error);
    }
  };

  function aliasChip(name) {
    return el("span", { class: "chip", dataset: { alias: name } }, name,
      el("button", {
        type: "button", class: "chip-remove", title: `Remove the alias ${name}`, "aria-label": `Remove the alias ${name}`,
        onclick: act(async () => {
          await api(`/v1/aliases/${encodeURIComponent(name)}`, { method: "DELETE" });
          say(`Removed the alias ${name}.`);
        }),
      }, "×"));
  }

  function closeMenus(except = null) {
    for (const menu of document.querySelectorAll("details.menu[open]")) if (menu !== except) menu.open = false;
  }

  // A row's less frequent actions, behind one button; choosing one closes the menu.
  function moreMenu(model) {
    const id = encodeURIComponent(model.id);
    const item = (label, work, attributes = {}) =>
      el("button", { type: "button", class: "menu-item", ...attributes, onclick: (event) => { closeMenus(); act(work)(event); } }, label);
    const menu = el("details", { class: "menu" },
      el("summary", { class: "button secondary", title: `More for model ${model.id}` }, "More"),
      el("div", { class: "menu-items" },
        el("a", { class: "menu-item", href: fmnist.href(`/models/${id}`) }, "Model card"),
        item("Samples", () => showSamples(model.id)),
        item("Checkpoint", () => download(`/v1/models/${id}/download`, `fmnist-${model.id}.safetensors`), { title: "The weights and spec, as safetensors" }),
        item("ONNX", () => download(`/v1/models/${id}/onnx`, `fmnist-${model.id}.onnx`)),
        item("Delete", async () => {
          if (!confirm(`Delete model ${model.id} and its checkpoint?`)) return;
          await api(`/v1/models/${id}`, { method: "DELETE" });
          say(`Deleted model ${model.id}.`);
        }, { class: "menu-item danger" }),
      ),
    );
    menu.addEventListener("toggle", () => { if (menu.open) closeMenus(menu); });
    return menu;
  }

  function modelRow(model) {
    const id = encodeURIComponent(model.id);
    return el("tr", { dataset: { modelId: model.id } },
      el("td", {}, el("a", { class: "model-link", href: fmnist.href(`/models/${id}`) }, shortId(model.id)), el("div", { class: "hint" }, "job ", el("a", { href: fmnist.href(`/jobs/${encodeURIComponent(model.job_id)}`) }, shortId(model.job_id)))),
      el("td", {}, summary(model.spec)),
      el("td", {}, model.aliases.map(aliasChip)),
      el("td", { class: "num", dataset: { field: "test_acc" } }, percent(model.test_acc)),
      el("td", { class: "num", dataset: { field: "val_acc" } }, percent(model.val_acc)),
      el("td", { class: "num" }, model.parameters.toLocaleString(), el("div", { class: "hint" }, bytes(model.size_bytes))),
      el("td", {}, when(model.created_at)),
      el("td", { class: "actions" }, el("a", { class: "button", href: fmnist.href(`/predict?model=${id}`) }, "Predict"), moreMenu(model)),
    );
  }

  async function showSamples(modelId) {
    document.getElementById("samples-model").textContent = modelId;
    document.getElementById("samples-panel").hidden = false;
    document.getElementById("samples").hidden = true; // until the new figure is in
    await loadImage(document.getElementById("samples"), `/v1/models/${encodeURIComponent(modelId)}/samples.svg`);
  }

  // The alias named in the form: an existing one selects the model it points at (unless the user picked one),
  // and the line beside the button says whether setting it creates, moves or keeps it.
  function showAlias() {
    const name = nameInput.value.trim();
    const target = aliases.get(name);
    if (target !== undefined && !chosenByUser && [...select.options].some((option) => option.value === target)) {
      select.value = target;
    }
    const current = document.getElementById("alias-current");
    const button = document.getElementById("alias-submit");
    if (!name) {
      current.textContent = "";
      button.textContent = "Set alias";
    } else if (target === undefined) {
      current.textContent = `${name} is a new alias.`;
      button.textContent = "Create alias";
    } else if (target === select.value) {
      current.textContent = `${name} points at this model now.`;
      button.textContent = "Set alias";
    } else {
      current.textContent = `${name} points at ${target.slice(0, 12)}… now.`;
      button.textContent = "Move alias";
    }
    current.dataset.target = target || "";
  }

  async function refresh() {
    const [{ models, count }, listed] = await Promise.all([api("/v1/models?limit=500"), api("/v1/aliases")]);
    aliases = new Map(listed.aliases.map((alias) => [alias.name, alias.model_id]));
    document.getElementById("models-loading").hidden = true;
    document.querySelector("#models tbody").replaceChildren(...models.map(modelRow));
    document.getElementById("models-empty").hidden = count > 0;
    document.getElementById("models").hidden = count === 0;
    document.getElementById("alias-names").replaceChildren(
      ...[...aliases.keys()].sort().map((name) => el("option", { value: name }, `points at ${aliases.get(name).slice(0, 12)}…`)),
    );
    const chosen = select.value;
    select.replaceChildren(...models.map((model) => el("option", { value: model.id },
      `${model.id.slice(0, 12)}… · ${percent(model.test_acc)} · ${model.summary}${model.aliases.length ? ` (${model.aliases.join(", ")})` : ""}`)));
    if (chosenByUser && models.some((model) => model.id === chosen)) select.value = chosen;
    else chosenByUser = false;
    showAlias();
  }

  nameInput.addEventListener("input", () => { chosenByUser = false; showAlias(); });
  select.addEventListener("change", () => { chosenByUser = true; showAlias(); });
  document.addEventListener("click", (event) => { if (!event.target.closest("details.menu")) closeMenus(); });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeMenus(); });
  document.getElementById("alias-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = nameInput.value.trim();
    const modelId = select.value;
    act(async () => {
      await api(`/v1/aliases/${encodeURIComponent(name)}`, { method: "PUT", json: { model_id: modelId } });
      chosenByUser = false; // the alias now points at it: the default selection agrees
      say(`The alias ${name} now points at ${modelId}.`);
    })();
  });
  refresh().catch((error) => {
    document.getElementById("models-loading").hidden = true;
    report(error);
  });
})();
