"use strict";
// The sidecar's live dashboard: polls stats/live every second and redraws.
(function () {
  var POLL_MS = 1000;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) { node.appendChild(c); });
    return node;
  }

  function fmt(value, unit) {
    if (value === null || value === undefined) { return "–"; }
    return (Math.round(value * 100) / 100) + (unit || "");
  }

  // Draw one or two series (arrays of numbers or nulls) as lines on a canvas.
  function chart(canvas, series, colours) {
    var ratio = window.devicePixelRatio || 1;
    var width = canvas.clientWidth || 300, height = canvas.clientHeight || 90;
    canvas.width = width * ratio; canvas.height = height * ratio;
    var ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.clearRect(0, 0, width, height);
    var max = 0;
    series.forEach(function (s) { s.forEach(function (v) { if (v !== null && v > max) { max = v; } }); });
    max = max > 0 ? max * 1.1 : 1;
    ctx.strokeStyle = "#d0d7de"; ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(0, height - 0.5); ctx.lineTo(width, height - 0.5); ctx.stroke();
    series.forEach(function (s, i) {
      ctx.strokeStyle = colours[i]; ctx.lineWidth = 1.5; ctx.beginPath();
      var started = false;
      s.forEach(function (v, x) {
        if (v === null) { started = false; return; }
        var px = (x / Math.max(1, s.length - 1)) * width;
        var py = height - 2 - (v / max) * (height - 6);
        if (started) { ctx.lineTo(px, py); } else { ctx.moveTo(px, py); started = true; }
      });
      ctx.stroke();
    });
    canvas.setAttribute("data-max", String(Math.round(max * 1000) / 1000));
    canvas.setAttribute("data-drawn", String(Date.now()));
  }

  function card(name, data, kind) {
    var figures = el("div", { "class": "figures" }, [
      el("div", { "class": "figure" }, [el("b", { text: fmt(data.rps), "data-figure": "rps" }), el("span", { text: "requests/s" })]),
      el("div", { "class": "figure" }, [el("b", { text: fmt(data.p50, " ms") }), el("span", { text: "p50 latency" })]),
      el("div", { "class": "figure" }, [el("b", { text: fmt(data.p99, " ms") }), el("span", { text: "p99 latency" })]),
      el("div", { "class": "figure" }, [el("b", { text: fmt(data.error_rate * 100, " %") }), el("span", { text: "errors" })])
    ]);
    var rate = el("canvas", { "class": "chart", "data-chart": kind + ":" + name + ":rps", "aria-label": "requests per second" });
    var latency = el("canvas", { "class": "chart", "data-chart": kind + ":" + name + ":latency", "aria-label": "latency" });
    var node = el("div", { "class": "card", "data-name": name }, [
      el("h3", { text: name }), figures,
      el("div", { "class": "legend", text: "requests/s (blue) and errors/s (red), last minute" }), rate,
      el("div", { "class": "legend", text: "latency p50 (blue) and p99 (orange), ms" }), latency
    ]);
    return { node: node, draw: function () {
      chart(rate, [data.series.map(function (b) { return b.requests; }), data.series.map(function (b) { return b.errors; })], ["#0969da", "#cf222e"]);
      chart(latency, [data.series.map(function (b) { return b.p50; }), data.series.map(function (b) { return b.p99; })], ["#0969da", "#bc4c00"]);
    } };
  }

  function cards(container, table, kind) {
    container.innerHTML = "";
    var names = Object.keys(table || {});
    if (!names.length) { container.appendChild(el("p", { "class": "empty", text: "No requests yet." })); return; }
    var drawers = names.map(function (name) {
      var c = card(name, table[name], kind); container.appendChild(c.node); return c.draw;
    });
    drawers.forEach(function (draw) { draw(); });
  }

  function endpoints(container, clusters) {
    container.innerHTML = "";
    var rows = [];
    Object.keys(clusters || {}).forEach(function (name) {
      clusters[name].endpoints.forEach(function (e) {
        var state = e.available ? "serving" : (e.ejected ? "ejected for " + fmt(e.ejected_for, " s") : "unhealthy");
        rows.push(el("tr", {}, [
          el("td", { text: name }), el("td", { text: e.address }),
          el("td", { "class": e.available ? "ok" : "bad", text: state }),
          el("td", { text: String(e.active_requests) }), el("td", { text: fmt(e.latency_ewma_ms, " ms") }),
          el("td", { text: String(e.times_ejected) })
        ]));
      });
    });
    var head = el("tr", {}, ["cluster", "endpoint", "state", "in flight", "latency (EWMA)", "ejections"].map(function (h) { return el("th", { text: h }); }));
    container.appendChild(el("table", {}, [el("thead", {}, [head]), el("tbody", {}, rows)]));
  }

  function errors(container, list) {
    container.innerHTML = "";
    if (!list || !list.length) { container.appendChild(el("p", { "class": "empty", text: "No errors recorded." })); return; }
    var head = el("tr", {}, ["time", "listener", "cluster", "request", "status", "reason"].map(function (h) { return el("th", { text: h }); }));
    var rows = list.slice(0, 20).map(function (e) {
      return el("tr", {}, [
        el("td", { text: new Date(e.time * 1000).toLocaleTimeString() }), el("td", { text: e.listener }),
        el("td", { text: e.cluster || "–" }), el("td", { text: e.method + " " + e.path }),
        el("td", { "class": e.status >= 500 || e.status === 0 ? "bad" : "warn", text: e.status ? String(e.status) : "none" }),
        el("td", { text: e.reason })
      ]);
    });
    container.appendChild(el("table", {}, [el("thead", {}, [head]), el("tbody", {}, rows)]));
  }

  var stateBadge = document.getElementById("state");
  function poll() {
    fetch("stats/live", { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (data) {
      stateBadge.textContent = data.state; stateBadge.className = data.state;
      cards(document.getElementById("listeners"), data.listeners, "listener");
      cards(document.getElementById("clusters"), data.clusters, "cluster");
      endpoints(document.getElementById("endpoints"), data.clusters_state);
      errors(document.getElementById("errors"), data.errors);
      document.body.setAttribute("data-updated", String(data.time));
    }).catch(function () {
      stateBadge.textContent = "no answer from the sidecar"; stateBadge.className = "stale";
    }).then(function () { setTimeout(poll, POLL_MS); });
  }
  poll();
})();
