// The registry: models with their aliases; set, move and remove aliases, delete models, download files.
"use strict";

(() => {
  const { api, el, download, loadImage, shortId, percent, bytes, when, report, summary } = fmnist;
  const message = document.getElementById("models-message");

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

  function modelRow(model) {
    const id = encodeURIComponent(model.id);
    return el("tr", { dataset: { modelId: model.id } },
      el("td", {}, el("a", { class: "model-link", href: fmnist.href(`/models/${id}`) }, shortId(model.id)), el("div", { class: "hint" }, "job ", el("a", { href: fmnist.href(`/jobs/${encodeURIComponent(model.job_id)}`) }, shortId(model.job_id)))),
      el("td", {}, summary(model.spec)),
      el("td", {}, model.aliases.map(aliasChip)),
      el("td", {}, percent(model.test_acc)),
      el("td", {}, percent(model.val_acc)),
      el("td", {}, model.parameters.toLocaleString(), el("div", { class: "hint" }, bytes(model.size_bytes))),
      el("td", {}, when(model.created_at)),
      el("td", { class: "actions" },
        el("a", { class: "button", href: fmnist.href(`/predict?model=${id}`) }, "Predict"),
        el("a", { class: "button", href: fmnist.href(`/models/${id}`) }, "Card"),
        el("button", { type: "button", class: "secondary", onclick: act(() => showSamples(model.id)) }, "Samples"),
        el("button", { type: "button", class: "secondary", onclick: act(() => download(`/v1/models/${id}/download`, `fmnist-${model.id}.safetensors`)) }, "Checkpoint"),
        el("button", { type: "button", class: "secondary", onclick: act(() => download(`/v1/models/${id}/onnx`, `fmnist-${model.id}.onnx`)) }, "ONNX"),
        el("button", {
          type: "button", class: "danger",
          onclick: act(async () => {
            if (!confirm(`Delete model ${model.id} and its checkpoint?`)) return;
            await api(`/v1/models/${id}`, { method: "DELETE" });
            say(`Deleted model ${model.id}.`);
          }),
        }, "Delete"),
      ),
    );
  }

  async function showSamples(modelId) {
    document.getElementById("samples-model").textContent = modelId;
    document.getElementById("samples-panel").hidden = false;
    document.getElementById("samples").hidden = true; // until the new figure is in
    await loadImage(document.getElementById("samples"), `/v1/models/${encodeURIComponent(modelId)}/samples.svg`);
  }

  async function refresh() {
    const { models, count } = await api("/v1/models?limit=500");
    document.querySelector("#models tbody").replaceChildren(...models.map(modelRow));
    document.getElementById("models-empty").hidden = count > 0;
    const select = document.getElementById("alias-model");
    const chosen = select.value;
    select.replaceChildren(...models.map((model) => el("option", { value: model.id }, `${model.id} (${percent(model.test_acc)})`)));
    if (chosen) select.value = chosen;
  }

  document.getElementById("alias-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = document.getElementById("alias-name").value.trim();
    const modelId = document.getElementById("alias-model").value;
    act(async () => {
      await api(`/v1/aliases/${encodeURIComponent(name)}`, { method: "PUT", json: { model_id: modelId } });
      say(`The alias ${name} now points at ${modelId}.`);
    })();
  });
  refresh().catch(report);
})();
