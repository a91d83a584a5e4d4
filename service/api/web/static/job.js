// A job's page: status, live curves and the metrics table, from the job's event stream (polling when the
// stream is not available), and a cancel button. A line at the top sums the job up: status, test accuracy (and
// validation accuracy where the job holds some out), training time and device.
"use strict";

(() => {
  const { FINAL, ApiError, api, el, loadImage, streamEvents, statusBadge, percent, fixed, when, duration, report, flash } =
    fmnist;
  const jobId = document.getElementById("main").dataset.jobId;
  const base = `/v1/jobs/${encodeURIComponent(jobId)}`;
  const rows = new Map(); // epoch -> metrics row
  let job = null;

  const lastEpoch = () => (rows.size ? Math.max(...rows.keys()) : null);

  // The seed the run uses: the spec's, or the one drawn at submission when the spec left it out.
  function seedValue() {
    const drawn = job.spec.seed === null || job.spec.seed === undefined;
    return el("span", { dataset: { drawn: String(drawn) } }, el("code", {}, String(job.seed)),
      drawn ? el("span", { class: "hint", title: "The spec left the seed out: the server drew this one." }, " (drawn)") : null);
  }

  // The job's outcome so far. While it trains, the accuracies are the latest epoch's (the stream brings epochs,
  // not the job); once it has ended, the job's own: those of the epoch its model keeps.
  function renderSummary() {
    const live = !FINAL.has(job.status) && rows.size > 0;
    const latest = live ? rows.get(lastEpoch()) : null;
    const testAcc = live ? latest.test_acc : job.test_acc;
    const valAcc = live ? latest.val_acc : job.val_acc;
    const seconds = live ? [...rows.values()].reduce((sum, row) => sum + (row.seconds || 0), 0) : job.train_seconds;
    const field = (name, ...content) => el("span", { dataset: { field: name } }, ...content);
    const parts = [field("status", job.status)];
    if (testAcc !== null && testAcc !== undefined) {
      const label = job.status === "succeeded" ? "final test accuracy " : "test accuracy ";
      parts.push(el("span", {}, label, el("strong", {}, field("test_acc", percent(testAcc))), live ? ` at epoch ${latest.epoch}` : ""));
    } else if (job.status === "queued") {
      parts.push("waiting for a worker");
    }
    if (valAcc !== null && valAcc !== undefined) parts.push(el("span", {}, "val ", field("val_acc", percent(valAcc))));
    if (seconds) parts.push(el("span", {}, "trained ", field("train_seconds", duration(seconds))));
    if (job.device) parts.push(el("span", {}, "on ", field("device", job.device)));
    document.getElementById("job-summary").replaceChildren(...parts.flatMap((part, i) => (i ? [" · ", part] : [part])));
  }

  function renderJob(next) {
    job = next;
    renderSummary();
    document.getElementById("job-status").replaceChildren(statusBadge(job.status));
    const { epoch, epochs } = job.progress;
    document.getElementById("progress-bar").style.width = `${(100 * epoch) / epochs}%`;
    document.getElementById("progress-text").textContent = `epoch ${epoch} of ${epochs}`;
    const cancel = document.getElementById("cancel-button");
    cancel.hidden = FINAL.has(job.status);
    cancel.disabled = job.cancel_requested;
    cancel.textContent = job.cancel_requested ? "Cancelling…" : "Cancel";
    const error = document.getElementById("job-error");
    error.textContent = job.error || "";
    error.hidden = !job.error;
    const details = [
      ["seed", seedValue()],
      ["device", job.device || "–"],
      ["attempt", `${job.attempt} of ${job.max_attempts}`],
      ["preset", job.preset || "–"],
      ["sweep", job.sweep_id ? el("a", { href: fmnist.href(`/sweeps/${encodeURIComponent(job.sweep_id)}`) }, job.sweep_id) : "–"],
      ["study", job.study_id ? el("a", { id: "study-link", href: fmnist.href(`/studies/${encodeURIComponent(job.study_id)}`) }, job.study_id) : "–"],
      ["model", job.model_id ? el("a", { id: "model-link", href: fmnist.href(`/predict?model=${encodeURIComponent(job.model_id)}`) }, job.model_id) : "–"],
      ["created", when(job.created_at)],
      ["started", when(job.started_at)],
      ["finished", when(job.finished_at)],
    ];
    document.getElementById("job-details").replaceChildren(
      ...details.flatMap(([name, value]) => [el("dt", {}, name), el("dd", { dataset: { field: name } }, value)]),
    );
    const spec = Object.entries(job.spec).map(([name, value]) => [
      el("dt", {}, name),
      el("dd", { dataset: { field: name } }, name === "seed" ? seedValue() : el("code", {}, JSON.stringify(value))),
    ]);
    document.getElementById("job-spec").replaceChildren(...spec.flat());
  }

  function renderMetrics() {
    const sorted = [...rows.values()].sort((a, b) => a.epoch - b.epoch);
    document.querySelector("#metrics tbody").replaceChildren(
      ...sorted.map((row) =>
        el("tr", { dataset: { epoch: row.epoch } },
          el("td", {}, row.epoch),
          el("td", {}, fixed(row.train_loss)),
          el("td", {}, percent(row.train_acc)),
          el("td", {}, percent(row.val_acc)),
          el("td", {}, percent(row.test_acc)),
          el("td", {}, row.lr === null || row.lr === undefined ? "–" : Number(row.lr).toPrecision(3)),
          el("td", {}, fixed(row.seconds, 2)),
        ),
      ),
    );
  }

  // The figure is re-fetched after each epoch; epochs that arrive while one fetch runs share the next one.
  let curvesBusy = false;
  let curvesStale = false;
  async function refreshCurves() {
    if (!rows.size) return;
    if (curvesBusy) {
      curvesStale = true;
      return;
    }
    curvesBusy = true;
    try {
      do {
        curvesStale = false;
        const img = document.getElementById("curves");
        await loadImage(img, `${base}/curves.svg`);
        img.dataset.epochs = String(rows.size);
        document.getElementById("curves-empty").hidden = true;
      } while (curvesStale);
    } catch (error) {
      report(error);
    } finally {
      curvesBusy = false;
    }
  }

  async function loadMetrics() {
    const metrics = await api(`${base}/metrics`);
    for (const row of metrics.epochs) rows.set(row.epoch, row);
    renderMetrics();
    if (job) renderSummary();
  }

  function onEvent(event) {
    if (event.type === "status") {
      renderJob(JSON.parse(event.data));
    } else if (event.type === "epoch") {
      const row = JSON.parse(event.data);
      rows.set(row.epoch, row);
      renderMetrics();
      if (job && row.epoch > job.progress.epoch) renderJob({ ...job, progress: { ...job.progress, epoch: row.epoch } });
      else if (job) renderSummary();
      refreshCurves();
    }
  }

  async function follow() {
    for (let failures = 0; !FINAL.has(job.status); ) {
      try {
        let ended = false;
        await streamEvents(`${base}/events`, {
          lastEventId: lastEpoch(),
          onEvent: (event) => {
            if (event.type === "end") ended = true;
            else onEvent(event);
          },
        });
        if (ended) break;
        failures = 0; // the stream closed early (a restart, a proxy): pick it up after the last epoch
      } catch (error) {
        if (error instanceof ApiError && error.status !== 503) {
          if (error.status === 401 || error.status === 403) throw error;
          return poll(); // no event stream on this server
        }
        failures += 1;
        await new Promise((resolve) => setTimeout(resolve, Math.min(1000 * failures, 10_000)));
      }
    }
    // One last read, so that the table and the figure hold every epoch the job kept.
    renderJob(await api(base));
    await loadMetrics();
    await refreshCurves();
  }

  async function poll() {
    while (!FINAL.has(job.status)) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const before = rows.size;
      renderJob(await api(base));
      await loadMetrics();
      if (rows.size !== before) refreshCurves();
    }
  }

  document.getElementById("cancel-button").addEventListener("click", async () => {
    try {
      renderJob(await api(`${base}/cancel`, { method: "POST" }));
    } catch (error) {
      report(error);
    }
  });

  (async () => {
    try {
      renderJob(await api(base));
      await loadMetrics();
      await refreshCurves();
      if (!FINAL.has(job.status)) await follow();
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) flash(`No job ${jobId}.`);
      else report(error);
    }
  })();
})();
