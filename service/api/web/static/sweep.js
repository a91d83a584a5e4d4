// A sweep's page: its jobs' curves on one figure, and the jobs best first; polled until every job ends.
"use strict";

(() => {
  const { FINAL, ApiError, api, el, loadImage, shortId, statusBadge, percent, report, flash } = fmnist;
  const sweepId = document.getElementById("main").dataset.sweepId;
  const base = `/v1/sweeps/${encodeURIComponent(sweepId)}`;
  const POLL_MS = 2000;
  let figureFor = ""; // the jobs and epochs the figure shows: re-fetched when that changes

  const gridValues = (params) => Object.entries(params).map(([name, value]) => `${name} = ${JSON.stringify(value)}`).join(", ");

  function render(sweep) {
    const counts = Object.entries(sweep.counts).filter(([, n]) => n).map(([status, n]) => `${n} ${status}`).join(", ");
    document.getElementById("sweep-counts").textContent = counts;
    document.getElementById("cancel-sweep").hidden = sweep.jobs.every((job) => FINAL.has(job.status));
    const details = [
      ["base", JSON.stringify(sweep.base)],
      ["grid", Object.entries(sweep.grid).map(([name, values]) => `${name}: ${values.map((v) => JSON.stringify(v)).join(", ")}`).join("; ")],
      ["created", fmnist.when(sweep.created_at)],
    ];
    document.getElementById("sweep-details").replaceChildren(...details.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
    document.querySelector("#sweep-jobs tbody").replaceChildren(
      ...sweep.jobs.map((job, rank) =>
        el("tr", { dataset: { jobId: job.id } },
          el("td", {}, rank + 1),
          el("td", {}, el("a", { href: fmnist.href(`/jobs/${encodeURIComponent(job.id)}`) }, shortId(job.id))),
          el("td", {}, gridValues(job.params)),
          el("td", {}, statusBadge(job.status)),
          el("td", {}, `${job.progress.epoch}/${job.progress.epochs}`),
          el("td", {}, percent(job.val_acc)),
          el("td", {}, percent(job.test_acc)),
          el("td", {}, job.model_id ? el("a", { href: fmnist.href(`/predict?model=${encodeURIComponent(job.model_id)}`) }, shortId(job.model_id)) : "–"),
        ),
      ),
    );
  }

  async function refreshFigure(sweep) {
    const started = sweep.jobs.filter((job) => job.progress.epoch > 0);
    const key = started.map((job) => `${job.id}:${job.progress.epoch}`).join(",");
    if (!started.length || key === figureFor) return;
    figureFor = key;
    const jobs = started.map((job) => job.id).join(",");
    await loadImage(document.getElementById("compare"), `/v1/compare.svg?jobs=${encodeURIComponent(jobs)}`);
    document.getElementById("compare-empty").hidden = true;
  }

  async function poll() {
    try {
      const sweep = await api(base);
      render(sweep);
      await refreshFigure(sweep);
      if (sweep.jobs.every((job) => FINAL.has(job.status))) return;
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) return flash(`No sweep ${sweepId}.`);
      report(error);
      if (error.status === 401) return;
    }
    setTimeout(poll, POLL_MS);
  }

  document.getElementById("cancel-sweep").addEventListener("click", async () => {
    try {
      render(await api(`${base}/cancel`, { method: "POST" }));
    } catch (error) {
      report(error);
    }
  });
  poll();
})();
