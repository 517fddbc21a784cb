// The operations console's live updates: follows /dashboard/stream (one snapshot per refresh)
// and redraws the charts in place (Chart.getChart) and the tables, without a page reload.
// Tables are built with the DOM API (textContent): nothing from the server is parsed as HTML.
(function () {
  "use strict";

  const root = document.getElementById("ops-console");
  if (!root) return;
  window.sluiceConsole = { updates: 0, lastSnapshot: null, errors: 0 };

  function fmt(value, digits) {
    if (value === null || value === undefined) return "-";
    if (typeof value === "number") return value.toLocaleString(undefined, { maximumFractionDigits: digits ?? 1 });
    return String(value);
  }

  function pair(q) {
    return q && q.n ? `${fmt(q.p50)} / ${fmt(q.p99)}` : "-";
  }

  function row(cells, className) {
    const tr = document.createElement("tr");
    if (className) tr.className = className;
    for (const cell of cells) {
      const td = document.createElement("td");
      td.className = "py-1 pr-3 align-top";
      if (cell instanceof Node) td.appendChild(cell);
      else td.textContent = fmt(cell);
      if (td.textContent.length > 40) td.classList.add("wrap"); // long text wraps, the rest never
      tr.appendChild(td);
    }
    return tr;
  }

  function fill(tableId, rows, empty) {
    const body = document.querySelector(`#${tableId} tbody`);
    if (!body) return;
    body.replaceChildren();
    if (!rows.length) {
      const tr = row([empty]);
      tr.firstChild.colSpan = 20;
      tr.firstChild.classList.add("text-font-subtle-light");
      body.appendChild(tr);
      return;
    }
    for (const r of rows) body.appendChild(r);
  }

  function badge(text, tone) {
    const span = document.createElement("span");
    // Inline colours: the admin's stylesheet has only the utility classes unfold itself uses.
    const tones = {
      ok: ["#dcfce7", "#15803d"],
      warn: ["#fef3c7", "#b45309"],
      bad: ["#fee2e2", "#b91c1c"],
      info: ["#f3f4f6", "#374151"],
    };
    const [background, color] = tones[tone] || tones.info;
    span.className = "inline-block px-2 mr-1 rounded-default text-xs font-semibold";
    span.style.background = background;
    span.style.color = color;
    span.textContent = text;
    return span;
  }

  function updateCharts(charts) {
    for (const canvas of document.querySelectorAll("canvas[data-chart]")) {
      const data = charts[canvas.dataset.chart];
      if (!data) continue;
      let chart = window.Chart ? Chart.getChart(canvas) : undefined;
      if (!chart) {
        if (!window.Chart) continue;
        chart = new Chart(canvas.getContext("2d"), {
          type: "line",
          data: { labels: [], datasets: [] },
          options: JSON.parse(canvas.dataset.options || "{}"),
        });
      }
      chart.data.labels = data.labels;
      chart.data.datasets = data.datasets;
      chart.update("none");
    }
  }

  function updateAlerts(alerts) {
    const box = document.getElementById("alerts");
    box.replaceChildren();
    for (const alert of alerts) {
      const div = document.createElement("div");
      div.className = "border rounded-default px-4 py-2 text-sm";
      div.style.cssText = "border-color: #fca5a5; background: #fef2f2; color: #b91c1c";
      div.dataset.alert = alert.name;
      const strong = document.createElement("strong");
      strong.textContent = `${alert.name}: `;
      div.appendChild(strong);
      div.appendChild(document.createTextNode(alert.text));
      box.appendChild(div);
    }
  }

  function updateTables(s) {
    fill(
      "versions-table",
      (s.versions || []).map((v) => {
        const state = document.createElement("span");
        state.appendChild(badge(v.status, v.status === "canary" ? "warn" : v.status === "stable" ? "ok" : "info"));
        if (v.status === "canary") state.appendChild(document.createTextNode(` ${v.weight}%`));
        if (v.breaker_open) state.appendChild(badge("breaker open", "bad"));
        const r = v.requests;
        const failures = Object.entries(v.failures || {}).map(([k, n]) => `${k}: ${n}`).join(", ") || "-";
        return row(
          [
            `${v.model}@${v.version}`, state, `${r.succeeded} / ${r.failed} / ${r.cancelled} / ${r.rejected}`,
            v.error_rate === null ? "-" : `${fmt(v.error_rate, 2)} %`, failures, v.tokens_per_s,
            pair(v.ttft), pair(v.itl), pair(v.e2e), pair(v.queue),
            v.cache_hit_rate === null ? "-" : `${fmt(v.cache_hit_rate)} %`,
          ],
          v.error_rate > 1 || v.breaker_open ? "bg-red-50" : ""
        );
      }),
      "No traffic in this window."
    );
    const workers = s.workers || [];
    fill(
      "workers-table",
      workers.map((w) => {
        const tone = w.state === "ok" ? "ok" : w.state === "stale" ? "warn" : "bad";
        const versions = (w.versions || [])
          .map((v) => `${v.key}${v.error ? " (load failed)" : ""}: ${v.running} / ${v.waiting}` +
            `, slots ${fmt(v.slots)} %, KV ${fmt(v.kv)} %` +
            (v.attention ? `, attention ${v.attention}` : "") +
            (v.attention_fallback ? ` (${v.attention_fallback})` : ""))
          .join("; ");
        return row(
          [w.name, badge(w.state, tone), w.age, (w.models || []).join(", ") || "-", w.backend || "-",
           versions || "-", w.uptime_s === undefined ? "-" : `${fmt(w.uptime_s, 0)} s`],
          w.state === "ok" ? "" : "bg-red-50"
        );
      }),
      "No worker has reported."
    );
    fill(
      "upstreams-table",
      (s.upstreams || []).map((u) => {
        const tone = u.state === "closed" ? "ok" : u.state === "half_open" ? "warn" : "bad";
        const label = u.state === "closed" ? "in rotation" : u.state === "half_open" ? "half-open" : "out";
        const r = u.requests || {};
        return row(
          [u.version, u.replica, badge(label, tone), `${u.outstanding_requests} / ${u.outstanding_tokens}`,
           `${r.ok || 0} / ${r.error || 0} / ${r.cancelled || 0}`, pair(u.ttft), u.error || "-"],
          u.state === "closed" ? "" : "bg-red-50"
        );
      }),
      "No upstream replicas (no openai version is loaded)."
    );
    const admission = s.admission || {};
    fill(
      "refusals-table",
      (admission.refusals || []).map((r) => row([r.policy, r.reason, r.count])),
      "No refusals in this window."
    );
    fill(
      "waits-table",
      [
        ...(admission.waits || []).map((w) => row([`admission ${w.model} (${w.policy})`, w.p50, w.p99, w.n])),
        ...(admission.retrieval || []).map((r) => row([`retrieval ${r.model}`, r.p50, r.p99, r.n])),
      ],
      "Nothing admitted in this window."
    );
    fill(
      "top-users-table",
      (s.top_users || []).map((u) => row([u.user, u.key, u.tokens, u.tokens_per_s])),
      "No tokens in this window."
    );
    for (const el of document.querySelectorAll("[data-stat]")) {
      const key = el.dataset.stat;
      if (key === "workers") {
        el.textContent = `${workers.filter((w) => w.state === "ok").length} / ${workers.length}`;
      } else {
        const value = (s.totals || {})[key] ?? 0;
        el.textContent = fmt(value, 0);
        // Red only when something failed: "Failed 0" in red read as an alarm.
        el.style.color = key === "failed" && value > 0 ? "#b91c1c" : "";
      }
    }
  }

  function apply(snapshot) {
    window.sluiceConsole.lastSnapshot = snapshot;
    updateCharts(snapshot.charts || {});
    updateAlerts(snapshot.alerts || []);
    updateTables(snapshot);
    document.getElementById("updated-at").textContent = new Date(snapshot.at * 1000).toLocaleTimeString();
  }

  function start() {
    const first = document.getElementById("sluice-snapshot");
    if (first) apply(JSON.parse(first.textContent));
    const source = new EventSource(root.dataset.stream);
    const state = document.getElementById("live-state");
    source.addEventListener("snapshot", (event) => {
      window.sluiceConsole.updates += 1;
      state.textContent = "live";
      apply(JSON.parse(event.data));
    });
    source.onerror = () => {
      window.sluiceConsole.errors += 1;
      state.textContent = "reconnecting";
    };
  }

  // After unfold's own script has drawn the charts from their data-value (window load).
  if (document.readyState === "complete") start();
  else window.addEventListener("load", start);
})();
