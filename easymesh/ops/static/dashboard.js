"use strict";
// The sidecar's live dashboard: polls stats/live every second and redraws.
(function () {
  var POLL_MS = 1000;
  var BLUE = "#0969da", RED = "#cf222e", ORANGE = "#bc4c00", GRID = "#d0d7de", MUTED = "#57606a";

  var STATES = {
    ready: "serving: every listener accepts connections",
    starting: "not serving yet: a listener is not bound",
    draining: "finishing the requests in flight and accepting no new connections"
  };
  var LISTENERS = {
    outbound: "calls from the local app to other services",
    inbound: "calls from other services to the local app"
  };
  // The causes the sidecar records (its x-easymesh-error header), in words:
  // the sidecar's table, fetched once before the first poll.
  var CAUSES = {};

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) {
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function fmt(value, unit) {
    if (value === null || value === undefined) { return "–"; }
    return (Math.round(value * 100) / 100) + (unit || "");
  }

  function two(n) { return (n < 10 ? "0" : "") + n; }

  function clock(seconds) {
    var d = new Date(seconds * 1000);
    return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
  }

  function day(seconds) {
    var d = new Date(seconds * 1000);
    return d.getFullYear() + "-" + two(d.getMonth() + 1) + "-" + two(d.getDate());
  }

  // "3 d 4 h", "2 h 5 min", "7 min 12 s" or "40 s".
  function duration(seconds) {
    var s = Math.max(0, Math.floor(seconds));
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    if (d) { return d + " d " + h + " h"; }
    if (h) { return h + " h " + m + " min"; }
    if (m) { return m + " min " + (s % 60) + " s"; }
    return s + " s";
  }

  // The smallest of 1, 2, 2.5, 5 times a power of ten that is >= value.
  function niceCeiling(value) {
    if (!(value > 0)) { return 1; }
    var power = Math.pow(10, Math.floor(Math.log(value) / Math.LN10));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (steps[i] * power >= value) { return steps[i] * power; }
    }
    return 10 * power;
  }

  // A latency chart's scale leaves out the few seconds far slower than the
  // rest: at most one in ten of the seconds with data, each over OUTLIER
  // times slower than the next.  They are drawn on the scale's top edge,
  // marked, and the slowest's value is written beside its mark.
  var OUTLIER = 4;

  // The largest value of each second, over all the series.
  function peaks(series) {
    var out = [];
    for (var x = 0; x < series[0].length; x++) {
      var peak = null;
      series.forEach(function (s) { if (s[x] !== null && (peak === null || s[x] > peak)) { peak = s[x]; } });
      if (peak !== null) { out.push(peak); }
    }
    return out.sort(function (a, b) { return a - b; });
  }

  // The top of a chart's scale: the largest value, or for latency the
  // largest once the outliers are left out.
  function scaleTop(series, leaveOutliers) {
    var values = peaks(series), n = values.length;
    if (!n) { return 1; }
    var fits = values[n - 1];
    if (leaveOutliers) {
      for (var k = Math.min(Math.max(1, Math.floor(n / 10)), n - 1); k >= 1; k--) {
        if (values[n - k] > OUTLIER * values[n - k - 1]) { fits = values[n - k - 1]; break; }
      }
    }
    return niceCeiling(fits);
  }

  // Draw series (arrays of numbers or nulls, one per second, oldest first)
  // as lines on a canvas, with the scale's top value and the time axis.
  // The first series is drawn wider, beneath the second, so that both show
  // where they are equal (every request an error); a second with no
  // neighbour to join is a dot.
  function chart(canvas, series, colours, unit, leaveOutliers) {
    var ratio = window.devicePixelRatio || 1;
    var width = canvas.clientWidth || 300, height = canvas.clientHeight || 96;
    canvas.width = width * ratio; canvas.height = height * ratio;
    var ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.clearRect(0, 0, width, height);
    var top = 14, bottom = height - 14;
    var max = scaleTop(series, leaveOutliers);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = MUTED;
    ctx.textBaseline = "alphabetic";
    var scale = fmt(max) + " " + unit;
    ctx.fillText(scale, 0, top - 3);
    var scaleWidth = ctx.measureText(scale).width;
    ctx.fillText("60 s ago", 0, height - 2);
    var now = "now";
    ctx.fillText(now, width - ctx.measureText(now).width, height - 2);
    ctx.strokeStyle = GRID; ctx.lineWidth = 1;
    ctx.setLineDash([3, 3]);
    ctx.beginPath(); ctx.moveTo(0, top + 0.5); ctx.lineTo(width, top + 0.5); ctx.stroke();
    ctx.setLineDash([]);
    ctx.beginPath(); ctx.moveTo(0, bottom + 0.5); ctx.lineTo(width, bottom + 0.5); ctx.stroke();
    var slowest = null;
    series.forEach(function (s, i) {
      // A series that is zero throughout would only hide the axis.
      if (!s.some(function (v) { return v; })) { return; }
      var wide = i === 0 && series.length > 1;
      var step = width / Math.max(1, s.length - 1);
      function y(v) { return bottom - (Math.min(v, max) / max) * (bottom - top); }
      ctx.strokeStyle = ctx.fillStyle = colours[i];
      ctx.lineWidth = wide ? 4 : 1.5; ctx.lineJoin = "round"; ctx.beginPath();
      s.forEach(function (v, x) {
        if (v === null) { return; }
        if (x > 0 && s[x - 1] !== null) { ctx.lineTo(x * step, y(v)); } else { ctx.moveTo(x * step, y(v)); }
      });
      ctx.stroke();
      s.forEach(function (v, x) {
        if (v === null) { return; }
        var alone = (x === 0 || s[x - 1] === null) && (x === s.length - 1 || s[x + 1] === null);
        if (alone) {
          ctx.beginPath(); ctx.arc(x * step, y(v), wide ? 3.5 : 2, 0, 2 * Math.PI); ctx.fill();
        }
        if (v > max) {
          // Above the scale: a mark on its top edge.
          var half = wide ? 6 : 4;
          ctx.beginPath(); ctx.moveTo(x * step, top + 6 - 1.6 * half); ctx.lineTo(x * step - half, top + 6);
          ctx.lineTo(x * step + half, top + 6); ctx.closePath(); ctx.fill();
          if (slowest === null || v > slowest.value) { slowest = { value: v, x: x * step, colour: colours[i] }; }
        }
      });
    });
    var above = series.map(function (s) { return s.filter(function (v) { return v !== null && v > max; }); });
    if (slowest !== null) {
      // Its value beside its mark: on the left, unless the scale's is there.
      var text = fmt(slowest.value) + " " + unit;
      var textWidth = ctx.measureText(text).width;
      var textX = slowest.x - 9 - textWidth;
      if (textX < scaleWidth + 8) { textX = Math.min(slowest.x + 9, width - textWidth); }
      ctx.fillStyle = slowest.colour;
      ctx.fillText(text, textX, top - 2);
    }
    var box = canvas.getBoundingClientRect();
    canvas.setAttribute("data-max", String(max));
    canvas.setAttribute("data-above", above.map(function (values) { return values.join(" "); }).join(","));
    canvas.setAttribute("data-box", [box.left + window.scrollX, box.top + window.scrollY, width, height, top, bottom].join(","));
    canvas.setAttribute("data-drawn", String(Date.now()));
  }

  function legend(items) {
    var children = [];
    items.forEach(function (item, i) {
      // The first series is drawn wider (see chart).
      children.push(el("span", { "class": i === 0 ? "swatch wide" : "swatch", style: "background:" + item[1] }));
      children.push(item[0]);
    });
    return el("div", { "class": "legend" }, children);
  }

  function figure(text, label, attrs) {
    var value = el("b", { text: text });
    Object.keys(attrs || {}).forEach(function (k) { value.setAttribute(k, attrs[k]); });
    return el("div", { "class": "figure" }, [value, el("span", { text: label })]);
  }

  function card(name, data, kind, about) {
    var figures = el("div", { "class": "figures" }, [
      figure(fmt(data.rps), "requests/s", { "data-figure": "rps" }),
      figure(fmt(data.p50, " ms"), "p50 latency"),
      figure(fmt(data.p99, " ms"), "p99 latency"),
      figure(fmt(data.error_rate * 100, " %"), "errors", { "data-figure": "errors" })
    ]);
    var rate = el("canvas", { "class": "chart", "data-chart": kind + ":" + name + ":rps", "aria-label": "requests and errors per second, last minute" });
    var latency = el("canvas", { "class": "chart", "data-chart": kind + ":" + name + ":latency", "aria-label": "latency, last minute" });
    var node = el("div", { "class": "card", "data-name": name }, [
      el("h3", { text: name }), el("p", { "class": "about", text: about || "" }), figures,
      legend([["requests/s", BLUE], ["errors/s", RED]]), rate,
      legend([["p50 latency", BLUE], ["p99 latency", ORANGE]]), latency
    ]);
    return { node: node, draw: function () {
      chart(rate, [data.series.map(function (b) { return b.requests; }), data.series.map(function (b) { return b.errors; })], [BLUE, RED], "/s");
      chart(latency, [data.series.map(function (b) { return b.p50; }), data.series.map(function (b) { return b.p99; })], [BLUE, ORANGE], "ms", true);
    } };
  }

  function cards(container, table, kind, describe) {
    container.innerHTML = "";
    var names = Object.keys(table || {});
    if (!names.length) { container.appendChild(el("p", { "class": "empty", text: "No requests yet." })); return; }
    var drawers = names.map(function (name) {
      var c = card(name, table[name], kind, describe(name)); container.appendChild(c.node); return c.draw;
    });
    drawers.forEach(function (draw) { draw(); });
  }

  // An endpoint's state in words, and whether it is a bad one.
  function endpointState(e) {
    if (!e.available) {
      return [e.ejected ? "ejected for " + fmt(e.ejected_for, " s") : "unhealthy", true];
    }
    var n = e.failures_in_row;
    if (n > 0) {
      var cause = e.last_failure && e.last_failure.cause;
      var why = Object.prototype.hasOwnProperty.call(CAUSES, cause) ? CAUSES[cause].words : cause;
      return ["failing: " + (n === 1 ? "the last request" : "the last " + n + " requests") + " got no answer" + (why ? " (" + why + ")" : ""), true];
    }
    return ["serving", false];
  }

  function endpoints(container, clusters) {
    container.innerHTML = "";
    var rows = [];
    Object.keys(clusters || {}).forEach(function (name) {
      clusters[name].endpoints.forEach(function (e) {
        var state = endpointState(e);
        rows.push(el("tr", { "data-endpoint": name + " " + e.address }, [
          el("td", { text: name }), el("td", { text: e.address }),
          el("td", { "class": state[1] ? "bad" : "ok", text: state[0] }),
          el("td", { text: String(e.active_requests) }),
          el("td", { text: e.latency_ewma_ms === null ? "– (no answer yet)" : fmt(e.latency_ewma_ms, " ms") }),
          el("td", { text: String(e.times_ejected) })
        ]));
      });
    });
    if (!rows.length) { container.appendChild(el("p", { "class": "empty", text: "No endpoints." })); return; }
    var head = el("tr", {}, ["cluster", "endpoint", "state", "requests in flight", "latency estimate", "times ejected"].map(function (h) { return el("th", { text: h }); }));
    container.appendChild(el("table", {}, [el("thead", {}, [head]), el("tbody", {}, rows)]));
  }

  function errors(container, list) {
    container.innerHTML = "";
    if (!list || !list.length) { container.appendChild(el("p", { "class": "empty", text: "No errors recorded." })); return; }
    var head = el("tr", {}, ["time", "listener", "cluster", "request", "status", "reason"].map(function (h) { return el("th", { text: h }); }));
    var rows = list.slice(0, 20).map(function (e) {
      var why = Object.prototype.hasOwnProperty.call(CAUSES, e.reason) ? CAUSES[e.reason].words : null;
      return el("tr", { "data-error": e.reason }, [
        el("td", { text: clock(e.time) }), el("td", { text: e.listener }),
        el("td", { text: e.cluster || "–" }), el("td", { text: e.method + " " + e.path }),
        el("td", { "class": e.status >= 500 || e.status === 0 ? "bad" : "warn", text: e.status ? String(e.status) : "no response" }),
        el("td", {}, why ? [e.reason, el("span", { "class": "why", text: ": " + why })] : [e.reason])
      ]);
    });
    container.appendChild(el("table", {}, [el("thead", {}, [head]), el("tbody", {}, rows)]));
  }

  // Where each listener listens and sends, from the running config (once).
  var settings = null;
  fetch("config_dump", { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (dump) {
    settings = dump.settings || null;
  }).catch(function () {});

  // "tcp:8082:interface=127.0.0.1" as "127.0.0.1:8082"; other endpoints as given.
  function address(endpoint) {
    var m = /^tcp:(\d+)((?::[a-z]+=[^:]*)*)$/.exec(endpoint);
    if (!m) { return endpoint; }
    var host = /:interface=([^:]*)/.exec(m[2]);
    return host ? host[1] + ":" + m[1] : "port " + m[1] + " on every address";
  }

  function aboutListener(name) {
    var text = LISTENERS[name] || "";
    if (settings && settings[name]) { text += "; listens on " + address(settings[name]); }
    return text;
  }

  function aboutCluster(clustersState) {
    return function (name) {
      var c = clustersState && clustersState[name];
      if (!c) { return ""; }
      var n = c.endpoints.length;
      return n + (n === 1 ? " endpoint" : " endpoints") + ", balanced " + c.lb_policy.replace(/_/g, " ");
    };
  }

  var stateBadge = document.getElementById("state");
  function poll() {
    fetch("stats/live", { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (data) {
      stateBadge.textContent = data.state; stateBadge.className = data.state;
      document.getElementById("state-help").textContent = STATES[data.state] || "";
      document.getElementById("updated").textContent = "· updated " + clock(data.time);
      document.getElementById("node").textContent = data.node || "";
      document.getElementById("build").textContent = "easymesh " + data.version + " · up " +
        duration(data.time - data.started) + ", started " + day(data.started) + " " + clock(data.started);
      var totals = document.getElementById("totals");
      totals.innerHTML = "";
      totals.appendChild(el("b", { text: String(data.total || 0), "data-figure": "total" }));
      totals.appendChild(document.createTextNode(" requests handled since the sidecar started (one that passes through both listeners counts twice)"));
      cards(document.getElementById("listeners"), data.listeners, "listener", aboutListener);
      cards(document.getElementById("clusters"), data.clusters, "cluster", aboutCluster(data.clusters_state));
      endpoints(document.getElementById("endpoints"), data.clusters_state);
      errors(document.getElementById("errors"), data.errors);
      document.body.setAttribute("data-updated", String(data.time));
    }).catch(function () {
      stateBadge.textContent = "no answer from the sidecar"; stateBadge.className = "stale";
      document.getElementById("state-help").textContent = "";
    }).then(function () { setTimeout(poll, POLL_MS); });
  }
  fetch("causes", { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (causes) {
    CAUSES = causes || {};
  }).catch(function () {}).then(poll);
})();
