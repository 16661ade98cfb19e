// The console's only script (no inline script: the pages' CSP allows this origin's files only).
// Live numbers are written with textContent, never as HTML.
"use strict";
(function () {
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#64748b"];

  function chart(el, series, data, height) {
    if (!el || typeof uPlot === "undefined") return null;
    el.textContent = "";
    const opts = {
      width: Math.max(el.clientWidth || 0, 560),
      height: height || 240,
      scales: { x: { time: true } },
      series: [{}].concat(series),
      axes: [{}, { size: 70 }],
    };
    return new uPlot(opts, data, el);
  }

  function line(label, i) {
    return { label: label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true };
  }

  // -- overview: poll the JSON at the chosen interval, pause on demand -------------------------
  const live = document.getElementById("live");
  if (live) {
    let every = parseFloat(live.dataset.refresh) || 5;
    let timer = null;
    let paused = false;
    let runsChart = null;
    let lagChart = null;
    const pauseButton = document.getElementById("pause");
    const select = document.getElementById("refresh");
    const updated = document.getElementById("updated");

    function draw(s) {
      const xs = s.minute;
      const runs = [xs, s.runs, s.trades];
      const lag = [xs, s.lag_p99_s];
      if (runsChart) { runsChart.setData(runs); } else {
        runsChart = chart(document.getElementById("chart-runs"), [line("runs", 0), line("trades", 1)], runs);
      }
      if (lagChart) { lagChart.setData(lag); } else {
        const lagLine = Object.assign(line("lag p99 (s)", 2), { points: { show: true, size: 4 } });
        lagChart = chart(document.getElementById("chart-lag"), [lagLine], lag);
      }
    }

    // The processes' table, rebuilt from the JSON as text (never markup).
    function procs(rows) {
      const body = document.querySelector("#procs tbody");
      if (!body) return;
      const keys = ["kind", "host", "pid", "started_at", "seen_s_ago", "state", "version", "queue"];
      body.replaceChildren();
      rows.forEach(function (p) {
        const tr = document.createElement("tr");
        if (p.gone) tr.className = "warn";
        p.state = p.gone ? "gone" : "running";
        keys.forEach(function (k) {
          const td = document.createElement("td");
          td.textContent = p[k] === null || p[k] === undefined ? "-" : String(p[k]);
          tr.appendChild(td);
        });
        body.appendChild(tr);
      });
    }

    async function poll() {
      try {
        const response = await fetch(live.dataset.url, { headers: { accept: "application/json" } });
        if (!response.ok) throw new Error("HTTP " + response.status);
        const data = await response.json();
        document.querySelectorAll("[data-k]").forEach(function (el) {
          const v = data[el.dataset.k];
          el.textContent = v === null || v === undefined ? "-" : String(v);
        });
        draw(data.series);
        procs(data.processes || []);
        updated.textContent = "updated " + new Date().toLocaleTimeString();
        updated.dataset.polls = String((parseInt(updated.dataset.polls || "0", 10)) + 1);
      } catch (err) {
        updated.textContent = "update failed: " + err.message;
      }
    }

    function schedule() {
      if (timer) clearInterval(timer);
      timer = paused ? null : setInterval(poll, every * 1000);
    }

    select.addEventListener("change", function () {
      every = parseFloat(select.value);
      const url = new URL(window.location.href);
      url.searchParams.set("refresh", String(every));
      history.replaceState(null, "", url.toString());
      schedule();
    });
    pauseButton.addEventListener("click", function () {
      paused = !paused;
      pauseButton.textContent = paused ? "resume" : "pause";
      schedule();
    });
    poll();
    schedule();
  }

  // -- a user's tear sheet: the same series as `simctl report` ---------------------------------
  const sheet = document.getElementById("tearsheet");
  if (sheet) {
    fetch(sheet.dataset.url, { headers: { accept: "application/json" } })
      .then(function (r) { return r.json(); })
      .then(function (d) {
        const summary = document.getElementById("summary");
        if (d.error) { summary.textContent = d.error; return; }
        if (!d.t.length) { summary.textContent = "no runs yet"; return; }
        chart(document.getElementById("chart-pnl"),
          [line("P&L USD", 0), line("drawdown USD", 1),
           Object.assign(line("net contributions USD", 6), { show: false })],
          [d.t, d.pnl_usd, d.drawdown_usd, d.contributions_usd]);
        const assets = Object.keys(d.market_pct);
        const index = new Map(d.t.map(function (t, i) { return [t, i]; }));
        const buys = d.t.map(function () { return null; });
        const sells = d.t.map(function () { return null; });
        d.fills.forEach(function (f) {
          const i = index.get(f.t);
          const m = d.market_pct[f.asset];
          if (i === undefined || !m) return;
          (f.side === "buy" ? buys : sells)[i] = m[i];
        });
        const marks = function (label, color) {
          return { label: label, stroke: color, fill: color, width: 0, paths: function () { return null; },
                   points: { show: true, size: 7, fill: color } };
        };
        chart(document.getElementById("chart-market"),
          assets.map(line).concat([marks("buys", "#16a34a"), marks("sells", "#dc2626")]),
          [d.t].concat(assets.map(function (a) { return d.market_pct[a]; }), [buys, sells]));
        const s = d.summary;
        summary.textContent = s.runs + " runs; P&L " + s.pnl_usd + " USD; fees " + s.fees_usd +
          " USD; max drawdown " + s.max_drawdown_usd + " USD; the market over the period: " +
          Object.entries(s.market_move_pct).map(function (e) { return e[0] + " " + e[1] + " %"; }).join(", ");
        sheet.dataset.drawn = "1";
      })
      .catch(function (err) { document.getElementById("summary").textContent = "chart failed: " + err.message; });
  }

  // -- the market: every asset's stored prices, % since the window's first ------------------------
  const market = document.getElementById("market");
  if (market) {
    fetch(market.dataset.url, { headers: { accept: "application/json" } })
      .then(function (r) { return r.json(); })
      .then(function (d) {
        const assets = Object.keys(d).filter(function (a) { return d[a].t && d[a].t.length; });
        const last = document.getElementById("last");
        if (!assets.length) { last.textContent = "no stored prices in the window"; return; }
        // One time axis: the union of every asset's ticks; each series on it (gaps spanned).
        const times = Array.from(new Set([].concat.apply([], assets.map(function (a) { return d[a].t; }))))
          .sort(function (x, y) { return x - y; });
        const at = new Map(times.map(function (t, i) { return [t, i]; }));
        const columns = assets.map(function (a) {
          const col = times.map(function () { return null; });
          const first = d[a].price_usd[0];
          d[a].t.forEach(function (t, i) { col[at.get(t)] = (d[a].price_usd[i] / first - 1) * 100; });
          return col;
        });
        chart(document.getElementById("chart-prices"), assets.map(line), [times].concat(columns));
        last.textContent = "latest: " + assets.map(function (a) { return a + " " + d[a].last_usd + " USD"; }).join(", ");
        market.dataset.drawn = "1";
      })
      .catch(function (err) { document.getElementById("last").textContent = "chart failed: " + err.message; });
  }
})();
