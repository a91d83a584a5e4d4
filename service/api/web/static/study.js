// A study's page: its best trial, its figures and its trials in the order suggested; polled until it ends
// and every trial has.
"use strict";

(() => {
  const { FINAL, ApiError, api, el, loadImage, shortId, statusBadge, percent, when, report, flash } = fmnist;
  const studyId = document.getElementById("main").dataset.studyId;
  const base = `/v1/studies/${encodeURIComponent(studyId)}`;
  const POLL_MS = 2000;
  const FIGURES = ["history", "parallel", "importances"];
  let figuresFor = ""; // the trials' statuses and epochs the figures show: re-fetched when that changes

  const params = (values) => Object.entries(values).map(([name, value]) => `${name} = ${JSON.stringify(value)}`).join(", ");
  const ended = (study) => study.status !== "running" && study.trials.every((trial) => FINAL.has(trial.status));
  const jobLink = (jobId) => el("a", { href: fmnist.href(`/jobs/${encodeURIComponent(jobId)}`) }, shortId(jobId));

  function renderBest(best) {
    const node = document.getElementById("study-best");
    node.hidden = !best;
    if (!best) return;
    node.replaceChildren(
      el("strong", {}, `Best: trial ${best.number}`), ` (${params(best.params)}): `,
      "val acc ", el("span", { dataset: { field: "val_acc" } }, percent(best.val_acc)), ", ",
      "test acc ", el("span", { dataset: { field: "test_acc" } }, percent(best.test_acc)), ". Job ", jobLink(best.job_id),
      ...(best.model_id ? [", model ", el("a", { href: fmnist.href(`/predict?model=${encodeURIComponent(best.model_id)}`) }, shortId(best.model_id))] : []),
      ".",
    );
  }

  function render(study) {
    document.getElementById("study-status").replaceChildren(statusBadge(study.status));
    const counts = Object.entries(study.counts).filter(([, n]) => n).map(([status, n]) => `${n} ${status}`).join(", ");
    document.getElementById("study-counts").textContent = `${study.trials.length} of ${study.n_trials} trials${counts ? `: ${counts}` : ""}`;
    document.getElementById("cancel-study").hidden = study.status !== "running";
    renderBest(study.best);
    const details = [
      ["sampler", el("code", {}, JSON.stringify(study.sampler))],
      ["pruner", el("code", {}, JSON.stringify(study.pruner))],
      ["trials", study.n_trials],
      ["at once", study.max_concurrent],
      ["seed", study.seed],
      ["base", el("code", {}, JSON.stringify(study.base))],
      ["space", el("code", {}, JSON.stringify(study.space))],
      ["created", when(study.created_at)],
      ["finished", when(study.finished_at)],
    ];
    document.getElementById("study-details").replaceChildren(...details.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
    document.querySelector("#study-trials tbody").replaceChildren(
      ...study.trials.map((trial) =>
        el("tr", { dataset: { number: trial.number, jobId: trial.job_id } },
          el("td", {}, trial.number),
          el("td", {}, statusBadge(trial.status), trial.error ? el("p", { class: "error" }, trial.error) : null),
          el("td", {}, params(trial.params)),
          el("td", {}, `${trial.progress.epoch}/${trial.progress.epochs}`),
          el("td", {}, percent(trial.val_acc)),
          el("td", {}, percent(trial.test_acc)),
          el("td", {}, trial.pruned_at_epoch ?? "–"),
          el("td", {}, jobLink(trial.job_id)),
        ),
      ),
    );
    document.getElementById("study-trials-empty").hidden = study.trials.length > 0;
  }

  // A figure the server cannot give (not drawn yet, or not served by this version) stays hidden, with its caption.
  async function loadFigure(name) {
    const img = document.getElementById(`study-${name}`);
    const caption = document.getElementById(`study-${name}-empty`);
    try {
      await loadImage(img, `${base}/${name}.svg`);
      caption.hidden = true;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) throw error;
      img.hidden = true;
      img.removeAttribute("data-loaded");
      caption.hidden = false;
      caption.textContent = `This figure is not available: ${error.message}`;
    }
  }

  async function refreshFigures(study) {
    if (!study.trials.some((trial) => trial.progress.epoch > 0)) return;
    const key = study.trials.map((trial) => `${trial.number}:${trial.status}:${trial.progress.epoch}`).join(",");
    if (key === figuresFor) return;
    figuresFor = key;
    await Promise.all(FIGURES.map(loadFigure));
  }

  async function poll() {
    try {
      const study = await api(base);
      render(study);
      await refreshFigures(study);
      if (ended(study)) return;
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) return flash(`No study ${studyId}.`);
      report(error);
      if (error.status === 401) return;
    }
    setTimeout(poll, POLL_MS);
  }

  document.getElementById("cancel-study").addEventListener("click", async () => {
    try {
      render(await api(`${base}/cancel`, { method: "POST" }));
    } catch (error) {
      report(error);
    }
  });
  poll();
})();
