// The console's only script: copy buttons, and the progress of running exports (it polls the
// dashboard API's GET /api/v1/accounts/{id}/exports/{id} with the session, then shows the link).
"use strict";

document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  if (!source) return;
  const text = source.textContent.trim();
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) {
    // No clipboard permission (plain http on a LAN address): select the text for Ctrl-C instead.
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }
  const label = button.textContent;
  button.textContent = "✓";
  setTimeout(() => { button.textContent = label; }, 1500);
});

function pollExport(row) {
  const url = row.dataset.poll;
  const tick = async () => {
    let data;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!response.ok) return setTimeout(tick, 3000);
      data = await response.json();
    } catch (_) {
      return setTimeout(tick, 3000);
    }
    row.querySelector('[data-field="status"]').textContent = data.status;
    row.querySelector('[data-field="progress"]').value = data.progress;
    if (data.row_count !== null) row.querySelector('[data-field="rows"]').textContent = data.row_count;
    if (data.download_url) {
      const link = document.createElement("a");
      link.href = data.download_url;
      link.textContent = row.closest("table").dataset.downloadLabel || "Download";
      link.dataset.testid = "download";
      link.setAttribute("data-testid", "download");
      row.querySelector('[data-field="download"]').replaceChildren(link);
    }
    if (data.status === "queued" || data.status === "running") setTimeout(tick, 1000);
  };
  setTimeout(tick, 500);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-poll]").forEach(pollExport);
});
