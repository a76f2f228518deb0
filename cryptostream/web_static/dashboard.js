// cryptostream dashboard: one chart series per asset, a table of last prices,
// cards, live updates over Server-Sent Events. Plain JS, no build step; the
// chart library (TradingView Lightweight Charts) is served by the service itself.
(function () {
  "use strict";

  const LWC = window.LightweightCharts;
  const COLORS = ["#f7931a", "#627eea", "#26a17b", "#23292f", "#f0b90b", "#9945ff",
                  "#e84142", "#2a5ada", "#c2a633", "#8c8c8c", "#00a3ff", "#ff007a"];
  const DAY = 86400;
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  // No event at all (not even the 15 s ping) for this long: the stream is dead.
  const STALE_MS = 40000;
  const RETRY_MS = 2000;

  const $ = (sel) => document.querySelector(sel);
  const state = {
    mode: "pct",
    range: { live: 86400, from: null, to: null },
    assets: new Map(),   // id -> {id, symbol, name, color, series, visible, lastTime, info}
    days: [],
    summary: null,
    connected: false,
    everLost: false,
    request: 0,          // drops answers to superseded range requests
    gap: 0,              // seconds one chart point stands for in this view
    stream: null,
    lastEvent: 0,
    retryTimer: null,
  };

  // -- formatting (all times UTC) ----------------------------------------------------

  function fmtTime(ts) {
    if (ts == null) return "—";
    return new Date(ts * 1000).toISOString().slice(0, 19).replace("T", " ");
  }
  function fmtPrice(v) {
    const n = Number(v);
    if (v == null || v === "" || !Number.isFinite(n)) return "—";
    if (Math.abs(n) >= 1) {
      return n.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    }
    return n.toLocaleString("en-US", { maximumSignificantDigits: 6 });
  }
  function fmtPct(v) {
    const n = Number(v);
    if (v == null || v === "" || !Number.isFinite(n)) return "—";
    const text = n.toFixed(2);
    if (/^-?0\.00$/.test(text)) return "0.00 %";  // no "-0.00 %" for a tiny dip
    return (n > 0 ? "+" : "") + text + " %";
  }
  function signClass(v) {
    const n = Number(v);
    return !Number.isFinite(n) || v == null || v === "" ? "" : n > 0 ? "up" : n < 0 ? "down" : "";
  }
  function fmtCount(n) { return n == null ? "—" : Number(n).toLocaleString("en-US"); }
  // datetime-local values are read as UTC (the page says so next to the inputs).
  function parseUtc(text) {
    const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?/.exec(text || "");
    if (!m) return null;
    return Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0)) / 1000;
  }
  function toInput(ts) { return new Date(ts * 1000).toISOString().slice(0, 19); }

  // -- talking to the service ---------------------------------------------------------

  async function api(path) {
    // The access cookie (if the service has a token) goes along by itself.
    const res = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    if (!res.ok) throw new Error(path + ": HTTP " + res.status);
    return res.json();
  }

  // -- chart ---------------------------------------------------------------------------

  const chartEl = $("#chart");
  const chart = LWC.createChart(chartEl, {
    autoSize: true,
    // The library's logo injects an inline <style>, which the page's CSP forbids;
    // its attribution (notice and link) is in the page footer instead.
    layout: { background: { color: "#ffffff" }, textColor: "#374151", fontSize: 12, attributionLogo: false },
    grid: { vertLines: { color: "#f0f1f3" }, horzLines: { color: "#f0f1f3" } },
    rightPriceScale: { borderColor: "#e5e7eb" },
    // Each distinct time is one slot on this time scale; six assets ticking at
    // different instants make six times as many slots as points per series, so
    // "fit" must be allowed to squeeze them well below one pixel each.
    timeScale: { borderColor: "#e5e7eb", timeVisible: true, secondsVisible: false, minBarSpacing: 0.001 },
    crosshair: { mode: LWC.CrosshairMode.Normal },
    localization: { timeFormatter: (t) => fmtTime(t) + " UTC", priceFormatter: (v) => fmtAxis(v) },
  });

  function fmtAxis(v) {
    return state.mode === "pct" ? fmtPct(v) : fmtPrice(v);
  }

  function applyMode() {
    chart.applyOptions({
      rightPriceScale: { mode: state.mode === "abs" ? LWC.PriceScaleMode.Logarithmic : LWC.PriceScaleMode.Normal },
    });
    $("#mode-pct").setAttribute("aria-pressed", String(state.mode === "pct"));
    $("#mode-abs").setAttribute("aria-pressed", String(state.mode === "abs"));
  }

  function ensureAsset(info) {
    let a = state.assets.get(info.id);
    if (!a) {
      const color = COLORS[state.assets.size % COLORS.length];
      const series = chart.addSeries(LWC.LineSeries, {
        color, lineWidth: 2, priceLineVisible: false, lastValueVisible: true,
        title: info.symbol || info.id,
        priceFormat: { type: "custom", formatter: (v) => fmtAxis(v), minMove: 0.000001 },
      });
      a = { id: info.id, color, series, visible: true, info,
            lastTime: -Infinity, prevTime: -Infinity, popable: false };
      state.assets.set(info.id, a);
      renderLegend();
    }
    if (info.symbol !== undefined) {
      a.info = Object.assign({}, a.info, info);
      a.series.applyOptions({ title: a.info.symbol || a.id });
    }
    return a;
  }

  function rangeQuery() {
    const r = state.range;
    if (r.live === "all") return { from: null, to: null };
    if (r.live) {
      const last = state.summary && state.summary.totals.last;
      const now = Math.max(Date.now() / 1000, last || 0);
      return { from: now - r.live, to: null };
    }
    return { from: r.from, to: r.to };
  }

  function inRange(t) {
    const r = state.range;
    if (r.live) return true;  // live ranges follow new ticks
    return t >= r.from && t <= r.to;
  }

  async function loadSeries() {
    const id = ++state.request;
    const q = rangeQuery();
    const params = new URLSearchParams({
      mode: state.mode,
      points: String(Math.max(200, Math.min(2000, Math.round(chartEl.clientWidth || 1000)))),
    });
    if (q.from != null) params.set("from", String(q.from));
    if (q.to != null) params.set("to", String(q.to));
    const data = await api("/api/series?" + params);
    if (id !== state.request) return;  // the user picked another range meanwhile
    const totals = state.summary && state.summary.totals;
    const from = q.from != null ? q.from : (totals && totals.first) || 0;
    const to = q.to != null ? q.to : Math.max(Date.now() / 1000, (totals && totals.last) || 0);
    state.gap = Math.max(0, to - from) / Number(params.get("points"));
    const seen = new Set();
    let points = 0;
    for (const s of data.series) {
      const a = ensureAsset({ id: s.id, symbol: s.symbol, name: s.name });
      // [t, null] is a gap: a whitespace item keeps the time axis true across it.
      a.series.setData(s.points.map(([t, v]) => (v == null ? { time: t } : { time: t, value: v })));
      const n = s.points.length;
      a.lastTime = n ? s.points[n - 1][0] : -Infinity;
      a.prevTime = n > 1 ? s.points[n - 2][0] : -Infinity;
      a.popable = false;  // the server's points (extremes included) stay
      points += s.points.length;
      seen.add(s.id);
    }
    for (const a of state.assets.values()) {
      if (!seen.has(a.id)) {
        a.series.setData([]);
        a.lastTime = a.prevTime = -Infinity;
        a.popable = false;
      }
    }
    $("#chart-empty").hidden = points > 0;
    chart.timeScale().fitContent();
    renderRangeLabel(data);
  }

  function renderRangeLabel() {
    const r = state.range;
    let text;
    if (r.live === "all") text = "All data, live";
    else if (r.live) text = "Last " + ({ 3600: "hour", 86400: "24 hours", 604800: "7 days" }[r.live] || r.live + " s") + ", live";
    else text = fmtTime(r.from) + " → " + fmtTime(r.to) + " UTC";
    $("#range-label").textContent = text;
    for (const b of document.querySelectorAll("button.live")) {
      b.setAttribute("aria-pressed", String(String(r.live) === b.dataset.live));
    }
  }

  // The custom From/To boxes show the range on display (a live one as of now): they
  // never disagree with the label, and they are where a custom range starts from.
  function renderCustom() {
    const q = rangeQuery();
    const totals = state.summary && state.summary.totals;
    const to = q.to != null ? q.to : Math.ceil(Math.max(Date.now() / 1000, (totals && totals.last) || 0));
    const from = q.from != null ? q.from : totals && totals.first != null ? totals.first : to;
    $("#custom-from").value = toInput(from);
    $("#custom-to").value = toInput(to);
  }

  // -- legend, table, cards ----------------------------------------------------------

  function renderLegend() {
    const box = $("#legend");
    box.replaceChildren();
    for (const a of state.assets.values()) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "legend-item";
      b.dataset.asset = a.id;
      b.setAttribute("aria-pressed", String(a.visible));
      b.title = "Show or hide " + (a.info.name || a.id);
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = a.color;
      const label = document.createElement("span");
      label.textContent = a.info.symbol || a.id;
      const val = document.createElement("span");
      val.className = "val";
      val.textContent = a.info.variation != null ? fmtPct(a.info.variation) : "";
      b.append(sw, label, val);
      b.addEventListener("click", () => {
        a.visible = !a.visible;
        a.series.applyOptions({ visible: a.visible });
        b.setAttribute("aria-pressed", String(a.visible));
      });
      box.append(b);
    }
  }

  function updateLegendValue(a) {
    const el = document.querySelector('.legend-item[data-asset="' + CSS.escape(a.id) + '"] .val');
    if (el) el.textContent = a.info.variation != null ? fmtPct(a.info.variation) : "";
  }

  function renderRow(info) {
    const body = $("#last-table tbody");
    let tr = body.querySelector('tr[data-asset="' + CSS.escape(info.id) + '"]');
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.asset = info.id;
      for (const cls of ["asset", "num price", "num change", "num var", "time"]) {
        const td = document.createElement("td");
        td.className = cls;
        tr.append(td);
      }
      body.append(tr);
    }
    const a = state.assets.get(info.id);
    const last = info.last || {};
    const [cAsset, cPrice, cChange, cVar, cTime] = tr.children;
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = a ? a.color : "#ccc";
    const sym = document.createElement("b");
    sym.textContent = info.symbol || info.id;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = info.name || "";
    cAsset.replaceChildren(sw, sym, name);
    cPrice.textContent = fmtPrice(last.priceUsd);
    cPrice.dataset.price = last.priceUsd || "";
    cChange.textContent = fmtPct(last.changePercent24Hr);
    cChange.className = "num change " + signClass(last.changePercent24Hr);
    cVar.textContent = fmtPct(info.variation);
    cVar.className = "num var " + signClass(info.variation);
    cTime.textContent = fmtTime(last.timestamp);
    cTime.dataset.ts = last.timestamp != null ? String(last.timestamp) : "";
  }

  function renderTotals(t, source) {
    $("#card-assets .value").textContent = fmtCount(t.assets);
    $("#card-records .value").textContent = fmtCount(t.records);
    $("#card-days .value").textContent = fmtCount(t.days);
    $("#card-last .value").textContent = t.last != null ? fmtTime(t.last) : "—";
    if (source !== undefined) {
      const el = $("#card-source .value");
      el.textContent = source;
      el.classList.toggle("demo", source === "demo");
    }
    if (t.lastDay && !state.days.includes(t.lastDay)) {
      state.days.push(t.lastDay);
      state.days.sort();
      renderPickers();
    }
  }

  function renderDemo() {
    const demo = (state.summary && state.summary.source === "demo") ||
      [...state.assets.values()].some((a) => a.info.demo);
    $("#demo-badge").hidden = !demo;
  }

  function applyAsset(info) {
    const a = ensureAsset(info);
    a.info = Object.assign({}, a.info, info);
    renderRow(a.info);
    updateLegendValue(a);
  }

  async function loadSummary() {
    const s = await api("/api/summary");
    state.summary = s;
    state.days = s.days.slice();
    for (const info of s.assets) applyAsset(info);
    renderTotals(s.totals, s.source);
    renderPickers();
    renderDemo();
    renderClock(s.clock);
    if (s.status !== "ready") $("#range-label").textContent = "Loading the price history…";
    return s;
  }

  // -- a source's clock far from this machine's ----------------------------------------

  function renderClock(c) {
    const note = $("#clock-note");
    note.hidden = !c;
    note.textContent = c ? c.note : "";
  }

  async function loadClock() {
    try { renderClock((await api("/api/summary")).clock); } catch (e) { /* the stream says when the service is away */ }
  }

  // -- CoinCap credits ------------------------------------------------------------------

  const CREDITS_EVERY_MS = 60000;

  function fmtDay(iso) { return iso ? iso.slice(0, 10) : "—"; }

  function renderCredits(c) {
    const value = $("#card-credits .value"), sub = $("#card-credits .sub");
    const note = $("#credits-note");
    value.className = "value";
    sub.className = "sub";
    if (!c.source) {
      value.textContent = c.key === false ? "no key" : "not used";
      sub.textContent = c.key === false ? "keyless sources in use" : "CoinCap is not in the chain";
    } else {
      value.textContent = fmtCount(c.used) + " / " + (c.budget ? fmtCount(c.budget) : "no limit");
      if (c.exhausted) {
        value.classList.add("spent");
        sub.classList.add("spent");
        sub.textContent = (c.exhausted === "coincap" ? "CoinCap says spent" : "budget spent") +
          ", back " + fmtDay(c.period_end);
      } else if (c.lasts) {
        sub.textContent = "lasts to the reset, " + fmtDay(c.period_end);
      } else {
        sub.classList.add("warn");
        sub.textContent = "lasts until " + fmtDay(c.lastsUntil) +
          (c.mode === "pace" ? " (paced)" : c.mode === "failover" ? ", then fallbacks" : "");
      }
    }
    $("#card-credits").title = c.then ? "CoinCap credits this billing period: " + c.then : "";
    note.hidden = !c.note;
    note.textContent = c.note || "";
  }

  async function loadCredits() {
    try { renderCredits(await api("/api/credits")); } catch (e) { /* the stream says when the service is away */ }
  }

  // -- date pickers (UTC) ---------------------------------------------------------------

  function option(value, text) {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = text;
    return o;
  }

  function renderPickers() {
    const y = $("#pick-year"), m = $("#pick-month"), d = $("#pick-day");
    const sel = { y: y.value, m: m.value, d: d.value };
    const years = [...new Set(state.days.map((s) => s.slice(0, 4)))];
    y.replaceChildren(option("", "—"), ...years.map((v) => option(v, v)));
    y.value = years.includes(sel.y) ? sel.y : "";
    const months = [...new Set(state.days.filter((s) => s.startsWith(y.value + "-")).map((s) => s.slice(5, 7)))];
    m.replaceChildren(option("", "all"), ...months.map((v) => option(v, MONTHS[+v - 1])));
    m.value = months.includes(sel.m) ? sel.m : "";
    m.disabled = !y.value;
    const prefix = y.value + "-" + m.value + "-";
    const days = state.days.filter((s) => s.startsWith(prefix)).map((s) => s.slice(8, 10));
    d.replaceChildren(option("", "all"), ...days.map((v) => option(v, String(+v))));
    d.value = days.includes(sel.d) ? sel.d : "";
    d.disabled = !m.value;
  }

  function pickCalendar() {
    renderPickers();
    const y = $("#pick-year").value, m = $("#pick-month").value, d = $("#pick-day").value;
    if (!y) return setRange({ live: 86400 });
    let from, to;
    if (d) { from = Date.UTC(+y, +m - 1, +d) / 1000; to = from + DAY; }
    else if (m) { from = Date.UTC(+y, +m - 1, 1) / 1000; to = Date.UTC(+y, +m, 1) / 1000; }
    else { from = Date.UTC(+y, 0, 1) / 1000; to = Date.UTC(+y + 1, 0, 1) / 1000; }
    // [from, to): the API's range is inclusive, a bucket's end belongs to the next one.
    setRange({ live: null, from, to: to - 0.000001 }, true);
  }

  function setRange(range, keepPickers) {
    state.range = Object.assign({ live: null, from: null, to: null }, range);
    if (!keepPickers) {
      $("#pick-year").value = "";
      renderPickers();
    }
    renderRangeLabel();
    renderCustom();
    loadSeries().catch(lost);
  }

  // -- live stream --------------------------------------------------------------------

  function setConnected(ok) {
    state.connected = ok;
    const c = $("#conn");
    c.dataset.state = ok ? "live" : state.everLost ? "lost" : "connecting";
    c.textContent = ok ? "live" : state.everLost ? "reconnecting…" : "connecting…";
    $("#banner").hidden = ok || !state.everLost;
  }

  function lost() {
    state.everLost = true;
    setConnected(false);
  }

  function connect() {
    clearTimeout(state.retryTimer);
    if (state.stream) state.stream.close();
    const es = new EventSource("/api/stream");
    state.stream = es;
    state.lastEvent = Date.now();
    const seen = () => { state.lastEvent = Date.now(); };
    es.addEventListener("hello", async () => {
      seen();
      const wasLost = state.everLost && !state.connected;
      try {
        // After a gap, fetch everything again: ticks may have been written meanwhile.
        if (wasLost || !state.summary) { await loadSummary(); await loadSeries(); loadCredits(); }
        setConnected(true);
      } catch (e) { lost(); }
    });
    es.addEventListener("ping", seen);
    es.addEventListener("reload", () => { seen(); loadSummary().then(loadSeries).catch(lost); });
    es.addEventListener("ticks", (ev) => { seen(); onTicks(JSON.parse(ev.data)); });
    es.onerror = () => {
      lost();
      // The browser retries by itself unless the answer was an error status.
      if (es.readyState === EventSource.CLOSED) state.retryTimer = setTimeout(connect, RETRY_MS);
    };
  }

  setInterval(() => {
    if (state.stream && Date.now() - state.lastEvent > STALE_MS) { lost(); connect(); }
  }, 5000);

  function onTicks(msg) {
    for (const info of msg.assets) applyAsset(info);
    for (const [id, points] of Object.entries(msg.ticks)) {
      const a = state.assets.get(id);
      if (!a) continue;
      for (const [t, price, pct] of points) {
        const v = state.mode === "pct" ? pct : price;
        if (v == null || t <= a.lastTime || !inRange(t)) continue;
        // The time scale gives every distinct time the same width: adding each tick
        // to a year-long view would crowd its right end. So the newest tick is always
        // the last point, but a live point that came less than one point's worth of
        // time after the one before it makes way for the next tick.
        if (a.popable && a.lastTime - a.prevTime < state.gap) a.series.pop(1);
        else a.prevTime = a.lastTime;
        a.series.update({ time: t, value: v });
        a.lastTime = t;
        a.popable = true;
        $("#chart-empty").hidden = true;
      }
    }
    if (state.summary) state.summary.totals = msg.totals;
    renderTotals(msg.totals, msg.source);
    renderDemo();
  }

  // -- wiring ---------------------------------------------------------------------------

  $("#mode-pct").addEventListener("click", () => { state.mode = "pct"; applyMode(); loadSeries().catch(lost); });
  $("#mode-abs").addEventListener("click", () => { state.mode = "abs"; applyMode(); loadSeries().catch(lost); });
  for (const b of document.querySelectorAll("button.live")) {
    b.addEventListener("click", () => setRange({ live: b.dataset.live === "all" ? "all" : +b.dataset.live }));
  }
  for (const id of ["#pick-year", "#pick-month", "#pick-day"]) $(id).addEventListener("change", pickCalendar);
  // The server thins the chosen range to about one point per pixel; after zooming
  // in with the mouse, this makes the visible window the range, fetched anew.
  $("#zoom-view").addEventListener("click", () => {
    const v = chart.timeScale().getVisibleRange();
    if (!v) return;
    setRange({ live: null, from: Math.floor(v.from), to: Math.ceil(v.to) });
  });
  $("#custom").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const from = parseUtc($("#custom-from").value), to = parseUtc($("#custom-to").value);
    if (from == null || to == null || to < from) {
      $("#range-label").textContent = "Custom range: 'From' must be before 'To'.";
      return;
    }
    setRange({ live: null, from, to });
  });

  // For tests and the curious: what the chart holds right now (read-only).
  window.cryptostreamDashboard = {
    snapshot() {
      const series = {};
      for (const a of state.assets.values()) {
        const data = a.series.data().filter((d) => d.value !== undefined);
        series[a.id] = {
          points: data.length,
          first: data.length ? data[0].time : null,
          last: data.length ? data[data.length - 1].time : null,
          lastValue: data.length ? data[data.length - 1].value : null,
          visible: a.visible,
        };
      }
      const visible = chart.timeScale().getVisibleRange();
      return { mode: state.mode, range: state.range, connected: state.connected, series, visible };
    },
  };

  async function start() {
    applyMode();
    renderRangeLabel();
    loadCredits();
    setInterval(loadCredits, CREDITS_EVERY_MS);
    setInterval(loadClock, CREDITS_EVERY_MS);
    try {
      const s = await loadSummary();
      const last = s.totals.last;
      const now = Date.now() / 1000;
      // An old data folder: show its whole history rather than an empty "last 24 hours".
      if (last != null && now - last > DAY) setRange({ live: "all" });
      else await loadSeries();
      renderCustom();
    } catch (e) {
      lost();
    }
    connect();
  }

  start();
})();
