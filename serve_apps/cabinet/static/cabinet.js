// meterray cabinet: progressive enhancement of the server-rendered pages. Every page works without this
// script (links and forms reload the page); with it, charts are drawn (uPlot, served from this origin),
// the consumption interval switch and the archive form redraw without a reload, and the browser's time
// zone is told to the server (cookie mr_tz) so that dates are written in it.
(function () {
  "use strict";
  var html = document.documentElement;
  var locale = html.getAttribute("data-locale") || "ru-RU";

  // ---- the browser's time zone
  var tz = "";
  try { tz = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { tz = ""; }
  if (tz && document.cookie.indexOf("mr_tz=" + encodeURIComponent(tz)) < 0) {
    document.cookie = "mr_tz=" + encodeURIComponent(tz) + "; path=/; max-age=31536000; samesite=lax";
    if (tz !== html.getAttribute("data-tz") && document.querySelector("time") && !sessionStorage.getItem("mr_tz_reloaded")) {
      sessionStorage.setItem("mr_tz_reloaded", "1");
      location.reload();
      return;
    }
  }
  var zone = tz || html.getAttribute("data-tz");

  // ---- chart data: one request at a time, so that an expired session is renewed once, not raced
  var queue = Promise.resolve();
  function getJSON(url) {
    var run = queue.then(function () {
      return fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } }).then(function (r) {
        if (r.status === 401) { location.reload(); throw new Error("session ended"); }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      });
    });
    queue = run.catch(function () {});
    return run;
  }

  function i18n() {
    var el = document.getElementById("i18n");
    return el ? JSON.parse(el.textContent) : {};
  }
  var text = i18n();
  var num = new Intl.NumberFormat(locale, { maximumFractionDigits: 3 });
  function timeFmt(interval) {
    var o = { timeZone: zone };
    if (interval === "1mo") { o.year = "numeric"; o.month = "short"; }
    else if (interval === "1d") { o.year = "numeric"; o.month = "short"; o.day = "numeric"; }
    else { o.month = "short"; o.day = "numeric"; o.hour = "2-digit"; o.minute = "2-digit"; }
    return new Intl.DateTimeFormat(locale, o);
  }

  var charts = {};

  // ---- the columns a chart draws: measured values, and beside them the forecast's line and band (from the
  // forecasting API, issue 11) on the union of both time axes; a year comes as one column on a regular grid.
  function columns(series) {
    if (series.kind === "year") {
      var n = series.y.length, xs = new Array(n);
      for (var i = 0; i < n; i++) { xs[i] = series.start + i * series.step; }
      return { data: [xs, series.y], band: false };
    }
    var fc = series.forecast;
    if (!fc || fc.state !== "ok" || !fc.x || !fc.x.length) { return { data: [series.x, series.y], band: false }; }
    var at = {}, all = series.x.concat(fc.x.filter(function (v) { return series.x.indexOf(v) < 0; }));
    all.sort(function (a, b) { return a - b; });
    all.forEach(function (v, i) { at[v] = i; });
    function spread(x, y) {
      var out = new Array(all.length).fill(null);
      x.forEach(function (v, i) { out[at[v]] = y[i]; });
      return out;
    }
    return { data: [all, spread(series.x, series.y), spread(fc.x, fc.y), spread(fc.x, fc.lower), spread(fc.x, fc.upper)],
             band: true };
  }

  function draw(el, series, bars) {
    if (typeof uPlot === "undefined") { return; }
    var year = series.kind === "year";
    if (year) { bars = false; }
    var cols = columns(series);
    var fmt = timeFmt(series.interval || "30m");
    var axisFmt = year ? timeFmt("1d") : fmt;
    var started = performance.now();
    var opts = {
      width: Math.max(el.clientWidth, 280), height: 280,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), zone); },
      // Bars of energy stand on zero; a line of readings spans its own values.
      scales: bars ? { x: { time: true }, y: { range: function (u, min, max) { return [Math.min(0, min), max > 0 ? max * 1.1 : 1]; } } }
                   : { x: { time: true } },
      series: [
        { label: text.time, value: function (u, v) { return v == null ? "—" : fmt.format(new Date(v * 1e3)); } },
        {
          label: series.kind === "archive" ? (series.quantity || "") : text.consumption,
          stroke: "#0b5cad", width: 2, fill: bars ? "rgba(11,92,173,0.35)" : "rgba(11,92,173,0.08)",
          paths: bars ? uPlot.paths.bars({ size: [0.8, 48] }) : undefined, points: { show: !bars && cols.data[0].length < 60 },
          value: function (u, v) { return v == null ? "—" : num.format(v) + " " + series.unit; }
        }
      ],
      hooks: { draw: [function () {
        if (!el.hasAttribute("data-draw-ms")) { el.setAttribute("data-draw-ms", (performance.now() - started).toFixed(1)); }
        el.setAttribute("data-drawn", "1");
      }] },
      axes: [
        { space: 120, values: function (u, splits) {
          var last = null;  // a label like its neighbour's (two ticks in one day) is written once
          return splits.map(function (v) { var s = axisFmt.format(new Date(v * 1e3)); var out = s === last ? "" : s; last = s; return out; });
        } },
        { label: series.unit, size: 64, values: function (u, splits) { return splits.map(function (v) { return num.format(v); }); } }
      ]
    };
    if (cols.band) {
      var unitOf = function (u, v) { return v == null ? "—" : num.format(v) + " " + series.unit; };
      opts.series.push({ label: text.forecast, stroke: "#b35900", width: 2, dash: [6, 4], points: { show: false }, value: unitOf },
                       { label: text.lower, stroke: "rgba(179,89,0,0.45)", width: 1, points: { show: false }, value: unitOf },
                       { label: text.upper, stroke: "rgba(179,89,0,0.45)", width: 1, points: { show: false }, value: unitOf });
      opts.bands = [{ series: [4, 3], fill: "rgba(179,89,0,0.16)" }];  // upper over lower: the shaded interval
    }
    if (charts[el.id]) { charts[el.id].destroy(); }
    el.textContent = "";
    el.removeAttribute("data-drawn");
    el.removeAttribute("data-draw-ms");
    var values = cols.data[1].filter(function (v) { return v != null; }).length;
    el.setAttribute("data-points", String(year ? values : series.x.length));
    el.setAttribute("data-band-points", cols.band ? String(cols.data[4].filter(function (v) { return v != null; }).length) : "0");
    el.setAttribute("data-forecast", (series.forecast || {}).state || "");
    charts[el.id] = new uPlot(opts, cols.data, el);
    el.uplot = charts[el.id];  // for scripts and tests: the instance and the columns it drew
  }

  function load(el, params) {
    var url = el.getAttribute("data-src") + "?" + new URLSearchParams(params).toString();
    el.setAttribute("aria-busy", "true");
    return getJSON(url).then(function (series) {
      el.removeAttribute("aria-busy");
      Object.keys(params).forEach(function (k) { el.setAttribute("data-" + k, params[k]); });
      draw(el, series, el.getAttribute("data-kind") === "bars");
      return series;
    }, function (err) {
      el.removeAttribute("aria-busy");
      el.textContent = text.error || String(err);
      throw err;
    });
  }

  // ---- consumption: the chart, its table and the total follow the interval switch
  function fillTable(series) {
    var table = document.getElementById("consumption-table");
    if (!table) { return; }
    var details = document.getElementById("consumption-details"), total = document.getElementById("consumption-total");
    var fcNote = document.getElementById("forecast-chart-note");
    if (fcNote) { fcNote.textContent = (series.forecast || {}).state === "interval" ? text.fc_interval : ""; }
    if (series.kind === "year") {  // 17,520 rows are no table to read: the chart and its total
      if (details) { details.hidden = true; }
      if (total) {
        total.textContent = series.values ? text.year_total.replace("{v}", num.format(series.total)).replace("{unit}", series.unit)
                                          : text.year_empty;
      }
      return;
    }
    if (details) { details.hidden = false; }
    // Days and months on the meter's own calendar (its time zone); half-hours and hours in the user's.
    var calendar = series.interval === "1d" || series.interval === "1mo";
    var fmt = new Intl.DateTimeFormat(locale, series.interval === "1mo"
      ? { timeZone: series.timezone, year: "numeric", month: "long" }
      : calendar ? { timeZone: series.timezone, dateStyle: "short" } : { timeZone: zone, dateStyle: "short", timeStyle: "short" });
    var body = document.createElement("tbody");
    series.x.forEach(function (x, i) {
      var tr = document.createElement("tr");
      var when = document.createElement("time");
      when.dateTime = new Date(x * 1e3).toISOString();
      when.textContent = fmt.format(new Date(x * 1e3));
      var cells = [when, series.y[i] == null ? "—" : num.format(series.y[i]), (text.ds || {})[series.status[i]] || series.status[i]];
      cells.forEach(function (c, j) {
        var td = document.createElement("td");
        if (j === 1) { td.className = "num"; }
        if (typeof c === "string") { td.textContent = c; } else { td.appendChild(c); }
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    table.replaceChild(body, table.tBodies[0]);
    table.setAttribute("data-interval", series.interval);
    if (total && text.total) { total.textContent = text.total.replace("{v}", num.format(series.total)).replace("{unit}", series.unit); }
  }

  var cons = document.getElementById("consumption-chart");
  if (cons) {
    load(cons, { interval: cons.getAttribute("data-interval") }).then(fillTable).catch(function () {});
    var sw = document.querySelector("[data-chart-switch=consumption]");
    sw.addEventListener("click", function (ev) {
      var a = ev.target.closest("a[data-interval]");
      if (!a) { return; }
      ev.preventDefault();
      var iv = a.getAttribute("data-interval");
      load(cons, { interval: iv }).then(function (series) {
        sw.querySelectorAll("a").forEach(function (x) { x.removeAttribute("aria-current"); });
        a.setAttribute("aria-current", "true");
        cons.setAttribute("aria-label", text.consumption + ", " + ((text.intervals || {})[iv] || iv));
        fillTable(series);
        var url = new URL(location.href);
        url.searchParams.set("interval", iv);
        history.replaceState(null, "", url.toString());
        document.querySelectorAll("input[name=interval]").forEach(function (i) { i.value = iv; });
      }).catch(function () {});
    });
  }

  // ---- archive: any quantity over a period
  var arch = document.getElementById("archive-chart");
  if (arch) {
    var note = document.getElementById("archive-note");
    var showArchive = function (q, p) {
      load(arch, { quantity: q, period: p }).then(function (series) {
        note.textContent = !series.x.length ? text.nodata : (series.truncated ? text.truncated.replace("{n}", num.format(series.x.length)) : "");
      }).catch(function () {});
    };
    showArchive(arch.getAttribute("data-quantity"), arch.getAttribute("data-period"));
    var form = document.querySelector("[data-chart-form=archive]");
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var q = form.elements.quantity.value, p = form.elements.period.value;
      showArchive(q, p);
      var url = new URL(location.href);
      url.searchParams.set("quantity", q);
      url.searchParams.set("period", p);
      history.replaceState(null, "", url.toString());
    });
  }

  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (id) {
      var el = document.getElementById(id);
      charts[id].setSize({ width: Math.max(el.clientWidth, 280), height: 280 });
    });
  });
})();
