// A model's page: its card (GET /v1/models/{ref}/card) with the spec, lineage, provenance, input contract and
// known limits, the per-class scores, and the evaluation's three figures.
"use strict";

(() => {
  const { ApiError, api, el, loadImage, percent, fixed, when, duration, bytes, report, flash } = fmnist;
  const ref = document.getElementById("main").dataset.modelRef;

  const link = (path, text) => el("a", { href: fmnist.href(path) }, text);
  const shown = (value) => (value === null || value === undefined || value === "" || (Array.isArray(value) && !value.length) ? "–" : value);

  // A <dl> of [name, value] rows; each <dd> carries data-field=name for tests and scripts.
  function details(id, rows) {
    document.getElementById(id).replaceChildren(
      ...rows.flatMap(([name, value]) => [el("dt", {}, name), el("dd", { dataset: { field: name } }, shown(value))]),
    );
  }

  function keptLine(kept) {
    const trained = `${kept.epochs_trained} of ${kept.epochs_planned} planned epochs trained`;
    const epoch = kept.epoch === null ? "epoch ?" : `epoch ${kept.epoch}`;
    return kept.reason === "validation"
      ? `${epoch}: the best validation accuracy (${trained})`
      : `${epoch}: the last trained, no validation split to choose by (${trained})`;
  }

  function renderModel(card) {
    const kept = card.kept_epoch;
    details("card-model", [
      ["parameters", card.parameters.toLocaleString()],
      ["kept epoch", keptLine(kept)],
      ["test acc", percent(kept.test_acc)],
      ["val acc", percent(kept.val_acc)],
      ["checkpoint", `${bytes(card.size_bytes)}, sha256 ${card.sha256}`],
      ["created", when(card.created_at)],
    ]);
  }

  function renderLineage(lineage) {
    const id = encodeURIComponent;
    const resumed = lineage.resumed_from_epoch;
    details("card-lineage", [
      ["job", link(`/jobs/${id(lineage.job_id)}`, lineage.job_id)],
      ["preset", lineage.preset],
      ["sweep", lineage.sweep_id ? link(`/sweeps/${id(lineage.sweep_id)}`, lineage.sweep_id) : null],
      ["study", lineage.study_id ? [link(`/studies/${id(lineage.study_id)}`, lineage.study_id), ` trial ${lineage.trial_number}`] : null],
      ["attempts", `${lineage.attempts} of ${lineage.max_attempts}`],
      ["last attempt", resumed === null ? null : resumed === 0 ? "from scratch" : `resumed after epoch ${resumed}`],
      ["tags", Object.entries(lineage.tags || {}).map(([key, value]) => el("span", { class: "chip" }, value ? `${key}: ${value}` : key))],
      ["note", lineage.note],
      ["submitted", when(lineage.submitted_at)],
      ["started", when(lineage.started_at)],
      ["finished", when(lineage.finished_at)],
    ]);
  }

  function renderProvenance(provenance) {
    const graphs = provenance.cuda_graphs === null ? null : provenance.cuda_graphs ? "yes" : "no";
    details("card-provenance", [
      ["seed", String(provenance.seed)],
      ["code version", provenance.code_version ? el("code", {}, provenance.code_version) : null],
      ["torch", provenance.torch_version],
      ["device", provenance.device],
      ["CUDA graphs", graphs],
      ["pack size", provenance.pack_size === null ? null : String(provenance.pack_size)],
      ["training time", duration(provenance.train_seconds)],
      ["train samples", provenance.train_samples === null ? null : provenance.train_samples.toLocaleString()],
      ...Object.entries(provenance.data_sha256).map(([name, sha]) => [name, el("code", {}, sha)]),
    ]);
  }

  function renderEvaluation(evaluation) {
    const validation = evaluation.validation;
    document.getElementById("card-evaluation").textContent =
      `Test split (${evaluation.samples.toLocaleString()} images): accuracy ${percent(evaluation.accuracy)}, ` +
      `expected calibration error ${fixed(evaluation.ece)}.` +
      (validation ? ` Validation split (${validation.samples.toLocaleString()} images): accuracy ${percent(validation.accuracy)}, ` +
        `expected calibration error ${fixed(validation.ece)}.` : " No validation split: the job held none out.");
    document.querySelector("#per-class tbody").replaceChildren(
      ...evaluation.per_class.map((scores) =>
        el("tr", { dataset: { classId: scores.class_id } },
          el("td", {}, scores.class_name),
          el("td", {}, fixed(scores.precision)),
          el("td", {}, fixed(scores.recall)),
          el("td", {}, fixed(scores.f1)),
          el("td", {}, scores.support),
        ),
      ),
    );
  }

  function renderInput(contract) {
    details("card-input", [
      ["image", `${contract.height}×${contract.width} ${contract.colour}, ${contract.polarity}`],
      ["formats", contract.formats.join(", ")],
      ["largest file", bytes(contract.max_upload_bytes)],
      ["largest image", `${contract.max_image_pixels.toLocaleString()} pixels`],
      ["pixel arrays", contract.pixels],
    ]);
    document.getElementById("card-input-steps").replaceChildren(...contract.upload_steps.map((step) => el("li", {}, step)));
  }

  function renderLimits(limits) {
    document.getElementById("card-limits-setup").textContent = `Measured by ${limits.source}: ${limits.setup}.`;
    document.querySelector("#card-limits tbody").replaceChildren(
      ...limits.uploads.map((row) =>
        el("tr", {},
          el("td", {}, row.upload),
          el("td", { class: "num" }, fixed(row.accuracy)),
          el("td", { class: "num" }, row.change === null ? "–" : `${row.change >= 0 ? "+" : ""}${fixed(row.change)}`),
          el("td", { class: "num" }, fixed(row.agreement)),
        ),
      ),
    );
    document.getElementById("card-limits-notes").replaceChildren(...limits.notes.map((note) => el("li", {}, note)));
  }

  function render(card) {
    const id = card.model_id;
    document.title = `Model ${id} · fmnist`;
    document.getElementById("model-id").textContent = id;
    document.getElementById("model-aliases").replaceChildren(...card.aliases.map((name) => el("span", { class: "chip", dataset: { alias: name } }, name)));
    document.getElementById("predict-link").href = fmnist.href(`/predict?model=${encodeURIComponent(id)}`);
    document.getElementById("model-summary").textContent = card.summary;
    renderModel(card);
    renderLineage(card.lineage);
    renderEvaluation(card.evaluation);
    renderProvenance(card.provenance);
    const spec = Object.entries(card.spec).map(([name, value]) => [el("dt", {}, name), el("dd", { dataset: { field: name } }, el("code", {}, JSON.stringify(value)))]);
    document.getElementById("card-spec").replaceChildren(...spec.flat());
    renderInput(card.input_contract);
    renderLimits(card.known_limits);
    document.getElementById("card-loading").hidden = true;
    document.getElementById("card").hidden = false;
  }

  (async () => {
    try {
      const card = await api(`/v1/models/${encodeURIComponent(ref)}/card`);
      render(card);
      // By id, not by the alias the page may have been opened with: the figures are this card's model's.
      const figures = `/v1/models/${encodeURIComponent(card.model_id)}`;
      await Promise.all(["confusion", "calibration", "mistakes"].map((name) => loadImage(document.getElementById(name), `${figures}/${name}.svg`)));
    } catch (error) {
      document.getElementById("card-loading").hidden = true;
      if (error instanceof ApiError && error.status === 404) flash(`No model or alias ${ref}.`);
      else report(error);
    }
  })();
})();
