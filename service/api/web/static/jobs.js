// The job list: polled while the page is open, so status and progress stay live. Sorted by a column the user
// clicks (GET /v1/jobs?sort=), a page at a time through the listing's cursors; `?sort=` and `?limit=` in the
// page's own URL choose the first view. Until the first answer the table says it is loading; with no job at all
// it says how to submit one; when a refresh fails it says why, and keeps polling.
"use strict";

(() => {
  const { ApiError, api, asksForKey, el, shortId, statusBadge, summary, when, percent, duration, flash } = fmnist;
  const POLL_MS = 2000;
  const SORTABLE = ["created_at", "test_acc", "val_acc", "train_seconds"];
  const params = new URLSearchParams(location.search);
  const PAGE = Math.min(Math.max(Number.parseInt(params.get("limit"), 10) || 25, 1), 100);
  let sort = SORTABLE.includes((params.get("sort") || "").replace(/^-/, "")) ? params.get("sort") : "-created_at";
  // The cursor each visited page starts from (null: the first page); the last is the page shown.
  let cursors = [null];
  let nextCursor = null;
  let latest = 0; // the newest refresh: an older one's answer, for another sort or page, is dropped

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
      el("td", { class: "num", dataset: { field: "test_acc" } }, percent(job.test_acc)),
      el("td", { class: "num", dataset: { field: "val_acc" } }, percent(job.val_acc)),
      el("td", { class: "num", dataset: { field: "train_seconds" } }, duration(job.train_seconds)),
      el("td", {}, job.model_id ? el("a", { href: fmnist.href(`/predict?model=${encodeURIComponent(job.model_id)}`) }, shortId(job.model_id)) : "–"),
      el("td", {}, when(job.created_at)),
    );
  }

  function showSort() {
    const column = sort.replace(/^-/, "");
    for (const th of document.querySelectorAll("#jobs th[data-sort]")) {
      const button = th.querySelector("button");
      if (th.dataset.sort === column) {
        const descending = sort.startsWith("-");
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
        button.title = `Sorted by ${button.textContent}, ${descending ? "highest" : "lowest"} first: click to reverse`;
      } else {
        th.removeAttribute("aria-sort");
        button.title = `Sort by ${button.textContent}, highest first`;
      }
    }
  }

  // The page's URL keeps the sort (and a page size other than the default), so a reload or a link shows the same.
  function keepInUrl() {
    const query = new URLSearchParams(location.search);
    if (sort === "-created_at") query.delete("sort");
    else query.set("sort", sort);
    const text = query.toString();
    history.replaceState(null, "", `${location.pathname}${text ? `?${text}` : ""}`);
  }

  function setBusy(busy) {
    document.getElementById("jobs").setAttribute("aria-busy", String(busy));
    document.getElementById("jobs-loading").hidden = !busy;
  }

  function showError(error) {
    const box = document.getElementById("jobs-error");
    box.hidden = error === null;
    if (error === null) return;
    let text;
    if (error instanceof ApiError && error.status === 401) text = "The jobs need an API key: enter it above.";
    else if (error instanceof ApiError) text = `Could not load the jobs: ${error.message}.`;
    else text = `Could not reach the server (${error.message || error}).`;
    if (!(error instanceof ApiError && error.status === 401)) text += ` Trying again every ${POLL_MS / 1000} s.`;
    box.textContent = text;
  }

  // The empty state's commands, for this server: its address, and the key header where it asks for one.
  function showCommands() {
    const base = `${location.origin}${fmnist.href("")}`;
    const key = asksForKey() ? ` -H "Authorization: Bearer $FMNIST_API_KEY"` : "";
    document.getElementById("jobs-empty-curl").textContent =
      `curl -X POST ${base}/v1/jobs${key} -H 'content-type: application/json' -d '{"epochs": 10}'`;
    document.getElementById("jobs-empty-cli").textContent =
      `fmnist submit --url ${base} --epochs 10`; // the CLI reads the key from FMNIST_API_KEY
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
    const request = ++latest;
    const status = document.getElementById("status-filter").value;
    const query = new URLSearchParams({ limit: PAGE, sort });
    if (status) query.set("status", status);
    const cursor = cursors[cursors.length - 1];
    if (cursor) query.set("cursor", cursor);
    const [jobs, sweeps, studies] = await Promise.all([
      api(`/v1/jobs?${query}`), api("/v1/sweeps?limit=10"), api("/v1/studies?limit=10"),
    ]);
    if (request !== latest) return;
    nextCursor = jobs.next_cursor;
    setBusy(false);
    showError(null);
    document.querySelector("#jobs tbody").replaceChildren(...jobs.data.map(jobRow));
    const none = jobs.count === 0;
    document.getElementById("jobs-empty").hidden = !(none && !status);
    const noneMatch = document.getElementById("jobs-none-match");
    noneMatch.hidden = !(none && status);
    noneMatch.textContent = `No ${status} jobs.`;
    document.getElementById("jobs").hidden = none && !status;
    document.getElementById("jobs-pager").hidden = none && !status;
    const first = (cursors.length - 1) * PAGE;
    document.getElementById("jobs-count").textContent = jobs.data.length ? `${first + 1}–${first + jobs.data.length} of ${jobs.count}` : "";
    document.getElementById("newer").disabled = cursors.length === 1;
    document.getElementById("older").disabled = nextCursor === null;
    document.querySelector("#sweeps tbody").replaceChildren(...sweeps.data.map(sweepRow));
    document.getElementById("sweeps-empty").hidden = sweeps.count > 0;
    document.getElementById("sweeps").hidden = sweeps.count === 0;
    document.querySelector("#studies tbody").replaceChildren(...studies.data.map(studyRow));
    document.getElementById("studies-empty").hidden = studies.count > 0;
    document.getElementById("studies").hidden = studies.count === 0;
    flash("");
  }

  // Another sort, page or filter: the rows shown are stale until its answer.
  function reload() {
    setBusy(true);
    refresh().catch((error) => {
      setBusy(false);
      showError(error);
    });
  }

  async function poll() {
    try {
      await refresh();
    } catch (error) {
      setBusy(false);
      showError(error);
      if (error.status === 401) return; // wait for a key: polling would only repeat the 401
    }
    setTimeout(poll, POLL_MS);
  }

  for (const th of document.querySelectorAll("#jobs th[data-sort]")) {
    th.querySelector("button").addEventListener("click", () => {
      sort = sort === `-${th.dataset.sort}` ? th.dataset.sort : `-${th.dataset.sort}`;
      cursors = [null];
      showSort();
      keepInUrl();
      reload();
    });
  }
  document.getElementById("status-filter").addEventListener("change", () => { cursors = [null]; reload(); });
  document.getElementById("newer").addEventListener("click", () => { if (cursors.length > 1) cursors.pop(); reload(); });
  document.getElementById("older").addEventListener("click", () => { if (nextCursor) cursors.push(nextCursor); reload(); });
  showSort();
  showCommands();
  poll();
})();
