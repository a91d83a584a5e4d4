// The job list: polled while the page is open, so status and progress stay live.
"use strict";

(() => {
  const { api, el, shortId, statusBadge, summary, when, percent, report, flash } = fmnist;
  const PAGE = 25;
  const POLL_MS = 2000;
  let offset = 0;

  function progressCell(job) {
    const { epoch, epochs } = job.progress;
    const bar = el("div", { class: "progress small" }, el("div", { class: "progress-bar" }));
    bar.firstChild.style.width = `${(100 * epoch) / epochs}%`;
    return el("td", {}, bar, `${epoch}/${epochs}`);
  }

  function jobRow(job) {
    return el(
      "tr",
      { dataset: { jobId: job.id } },
      el("td", {}, el("a", { href: fmnist.href(`/jobs/${encodeURIComponent(job.id)}`) }, shortId(job.id))),
      el("td", {}, statusBadge(job.status)),
      progressCell(job),
      el("td", {}, summary(job.spec), job.preset ? el("span", { class: "tag" }, job.preset) : null,
        job.sweep_id ? el("a", { class: "tag", href: fmnist.href(`/sweeps/${encodeURIComponent(job.sweep_id)}`) }, "sweep") : null,
        job.study_id ? el("a", { class: "tag", href: fmnist.href(`/studies/${encodeURIComponent(job.study_id)}`) }, "study") : null),
      el("td", {}, job.model_id ? el("a", { href: fmnist.href(`/predict?model=${encodeURIComponent(job.model_id)}`) }, shortId(job.model_id)) : "–"),
      el("td", {}, when(job.created_at)),
    );
  }

  function bestTest(sweep) {
    const scores = sweep.jobs.map((job) => job.test_acc).filter((acc) => acc !== null);
    return scores.length ? percent(Math.max(...scores)) : "–";
  }

  function sweepRow(sweep) {
    const grid = Object.entries(sweep.grid).map(([name, values]) => `${name}: ${values.map((v) => JSON.stringify(v)).join(", ")}`);
    const counts = Object.entries(sweep.counts).filter(([, n]) => n).map(([status, n]) => `${n} ${status}`).join(", ");
    return el(
      "tr",
      {},
      el("td", {}, el("a", { href: fmnist.href(`/sweeps/${encodeURIComponent(sweep.id)}`) }, shortId(sweep.id))),
      el("td", {}, grid.join("; ")),
      el("td", {}, counts),
      el("td", {}, bestTest(sweep)),
      el("td", {}, when(sweep.created_at)),
    );
  }

  function studyRow(study) {
    const counts = Object.entries(study.counts).filter(([, n]) => n).map(([status, n]) => `${n} ${status}`).join(", ");
    return el(
      "tr",
      { dataset: { studyId: study.id } },
      el("td", {}, el("a", { href: fmnist.href(`/studies/${encodeURIComponent(study.id)}`) }, shortId(study.id))),
      el("td", {}, statusBadge(study.status)),
      el("td", {}, `${study.trials.length} of ${study.n_trials}${counts ? `: ${counts}` : ""}`),
      el("td", {}, study.best ? percent(study.best.val_acc) : "–"),
      el("td", {}, when(study.created_at)),
    );
  }

  async function refresh() {
    const status = document.getElementById("status-filter").value;
    const query = new URLSearchParams({ limit: PAGE, offset });
    if (status) query.set("status", status);
    const [jobs, sweeps, studies] = await Promise.all([
      api(`/v1/jobs?${query}`), api("/v1/sweeps?limit=10"), api("/v1/studies?limit=10"),
    ]);
    document.querySelector("#jobs tbody").replaceChildren(...jobs.data.map(jobRow));
    document.getElementById("jobs-empty").hidden = jobs.count > 0;
    document.getElementById("jobs").hidden = jobs.count === 0 && !status;
    const last = Math.min(offset + jobs.data.length, jobs.count);
    document.getElementById("jobs-count").textContent = jobs.count ? `${offset + 1}–${last} of ${jobs.count}` : "";
    document.getElementById("newer").disabled = offset === 0;
    document.getElementById("older").disabled = offset + PAGE >= jobs.count;
    document.querySelector("#sweeps tbody").replaceChildren(...sweeps.data.map(sweepRow));
    document.getElementById("sweeps-empty").hidden = sweeps.count > 0;
    document.getElementById("sweeps").hidden = sweeps.count === 0;
    document.querySelector("#studies tbody").replaceChildren(...studies.data.map(studyRow));
    document.getElementById("studies-empty").hidden = studies.count > 0;
    document.getElementById("studies").hidden = studies.count === 0;
    flash("");
  }

  async function poll() {
    try {
      await refresh();
    } catch (error) {
      report(error);
      if (error.status === 401) return; // wait for a key: polling would only repeat the 401
    }
    setTimeout(poll, POLL_MS);
  }

  document.getElementById("status-filter").addEventListener("change", () => { offset = 0; refresh().catch(report); });
  document.getElementById("newer").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); refresh().catch(report); });
  document.getElementById("older").addEventListener("click", () => { offset += PAGE; refresh().catch(report); });
  poll();
})();
