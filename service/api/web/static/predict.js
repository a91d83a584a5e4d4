// Drag-and-drop prediction: the images go to /v1/predict in one request; each gets its top-k as bars.
"use strict";

(() => {
  const { api, el, percent, report, flash } = fmnist;
  const modelSelect = document.getElementById("predict-model");
  const zone = document.getElementById("drop-zone");
  const picker = document.getElementById("predict-files");
  const status = document.getElementById("predict-status");

  async function loadChoices() {
    const wanted = new URLSearchParams(location.search).get("model");
    const [{ models }, { aliases }] = await Promise.all([api("/v1/models?limit=500"), api("/v1/aliases")]);
    const options = [
      ...aliases.map((alias) => el("option", { value: alias.name }, `alias ${alias.name} → ${alias.model_id}`)),
      ...models.map((model) => el("option", { value: model.id }, `${model.id}: ${fmnist.summary(model.spec)} (${percent(model.test_acc)})`)),
    ];
    modelSelect.append(...options);
    if (wanted && [...modelSelect.options].some((option) => option.value === wanted)) modelSelect.value = wanted;
  }

  function bars(prediction) {
    return el("ol", { class: "bars" },
      prediction.top_k.map((entry) => {
        const fill = el("span", { class: "bar-fill" });
        fill.style.width = `${(100 * entry.probability).toFixed(1)}%`;
        return el("li", { class: "bar", dataset: { classId: entry.class_id } },
          el("span", { class: "bar-label" }, entry.class_name),
          el("span", { class: "bar-track" }, fill),
          el("span", { class: "bar-value" }, percent(entry.probability)));
      }));
  }

  async function predict(files) {
    // The server decides what it can read, and answers for each file it cannot (a card says why).
    const images = [...files];
    if (!images.length) {
      flash("Drop PNG, JPEG, WebP, GIF or BMP images.");
      return;
    }
    flash("");
    const form = new FormData();
    for (const file of images) form.append("files", file, file.name);
    const query = new URLSearchParams({ top_k: document.getElementById("predict-top-k").value || "5" });
    if (modelSelect.value) query.set("model", modelSelect.value);
    status.textContent = `Classifying ${images.length} image${images.length === 1 ? "" : "s"}…`;
    try {
      const result = await api(`/v1/predict?${query}`, { method: "POST", body: form });
      status.textContent = `Model ${result.model_id}`;
      const cards = result.predictions.map((prediction, index) => {
        const preview = el("img", { class: "preview", alt: images[index].name });
        const url = URL.createObjectURL(images[index]);
        preview.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
        preview.src = url;
        if (prediction.error) {  // this image could not be used; the others were classified
          return el("article", { class: "prediction failed" },
            preview,
            el("div", {},
              el("h3", {}, "Not classified"),
              el("p", { class: "hint" }, images[index].name),
              el("p", { class: "error" }, prediction.error.detail)));
        }
        return el("article", { class: "prediction", dataset: { classId: prediction.class_id } },
          preview,
          el("div", {},
            el("h3", {}, prediction.class_name, " ", el("span", { class: "hint" }, percent(prediction.probability))),
            el("p", { class: "hint" }, images[index].name),
            bars(prediction)));
      });
      document.getElementById("predictions").prepend(...cards);
    } catch (error) {
      status.textContent = "";
      report(error);
    }
  }

  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    predict(event.dataTransfer.files);
  });
  picker.addEventListener("change", () => {
    predict(picker.files);
    picker.value = "";
  });
  loadChoices().catch(report);
})();
