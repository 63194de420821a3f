/* ovpnmon dashboard: a page of its own origin that reads only the public /api/v1 endpoints.
 *
 * Every name from the API is put into the page as text (textContent, never HTML). Routes live in
 * the URL's hash (#/clients, #/client/<name>?range=7d), so deep links and the back button work.
 * The page refreshes itself at the collector's interval. For the tests, every chart's uPlot
 * instance is kept in window.ovpnmon.charts by name (its .data is what it draws).
 */
"use strict";

(function () {
  const API = "/api/v1";
  const TOKEN_KEY = "ovpnmon.token";
  const RANGES = ["1h", "3h", "6h", "12h", "24h", "7d", "30d", "90d", "1y"];
  const RESOLUTIONS = ["auto", "raw", "5min", "hourly", "6h", "daily"];
  const ANALYTICS_RANGES = ["24h", "7d", "30d"];

  const state = { interval: 10, timezone: "UTC", timer: null, page: null, route: "" };
  // charts by name and, for the benchmark, when the first chart and the clients table were drawn
  window.ovpnmon = { charts: {}, state: state, refreshed: 0, marks: {} };

  // --- DOM helpers: text only -------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function card(label, value) {
    return el("div", { class: "card" },
      el("div", { class: "value", text: value }), el("div", { class: "label", text: label }));
  }

  function badge(text, kind) {
    return el("span", { class: "badge " + kind, text: text });
  }

  function number(value, digits) {
    return Number(value).toLocaleString(undefined, {
      minimumFractionDigits: digits, maximumFractionDigits: digits });
  }

  function bytes(value) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let v = Number(value), i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? String(v) : v.toFixed(2)) + " " + units[i];
  }

  // the same, with three significant digits: for axis labels
  function bytesShort(value) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let v = Number(value), i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? String(v) : String(Number(v.toPrecision(3)))) + " " + units[i];
  }

  function clientLink(name) {
    return el("a", { href: "#/client/" + encodeURIComponent(name), text: name });
  }

  // --- the API ------------------------------------------------------------------------------------

  // A token asked for once, kept for the browser session (sessionStorage). Entering one
  // reloads the page, so everything (health details, the time zone) is read with it.
  function askToken(message) {
    const dialog = document.getElementById("token-dialog");
    document.getElementById("token-message").textContent = message;
    if (!dialog.open) {
      document.getElementById("token-input").value = "";
      dialog.showModal();
      document.getElementById("token-input").focus();
    }
    return new Promise(() => {});  // the page reloads when a token is entered
  }

  function setupTokenForm() {
    document.getElementById("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = document.getElementById("token-input").value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      sessionStorage.setItem(TOKEN_KEY + ".tried", "1");
      location.reload();
    });
    document.getElementById("token-dialog").addEventListener("cancel", (e) => e.preventDefault());
  }

  async function api(path) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    const response = await fetch(API + path, { headers: headers, cache: "no-store" });
    if (response.status === 401) {
      const refused = token !== null || sessionStorage.getItem(TOKEN_KEY + ".tried") === "1";
      sessionStorage.removeItem(TOKEN_KEY);
      return askToken(refused
        ? "That token was refused by the API. Enter a valid token from [api] tokens."
        : "This API needs a bearer token (one of [api] tokens in its configuration).");
    }
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (!response.ok || !body || body.success === false) {
      const reason = body && body.error ? body.error : "HTTP " + response.status;
      throw new ApiError(reason, response.status);
    }
    return body;
  }

  class ApiError extends Error {
    constructor(message, status) { super(message); this.status = status; }
  }

  // --- health: the banner, the interval, the time zone ------------------------------------------

  async function checkHealth() {
    const banner = document.getElementById("banner");
    let body;
    try {
      body = await api("/health");
    } catch (error) {
      banner.hidden = false;
      banner.className = "bad";
      banner.textContent = "The API cannot read the database: " + error.message;
      return;
    }
    if (body.interval_seconds) state.interval = body.interval_seconds;
    if (body.timezone) state.timezone = body.timezone;
    document.getElementById("zone").textContent = "Times in " + state.timezone;
    if (body.status === "healthy") {
      banner.hidden = true;
      banner.textContent = "";
    } else {
      banner.hidden = false;
      banner.className = "";
      banner.textContent = "Collector " + body.status + ": " + (body.reason || "");
    }
  }

  // --- charts -------------------------------------------------------------------------------------

  // API timestamps are wall times in the API's zone ("YYYY-MM-DD HH:MM:SS"): read as UTC and
  // shown as UTC, the axis shows the same wall times the API wrote.
  function epoch(text) {
    return Date.parse(text.replace(" ", "T") + "Z") / 1000;
  }

  function cssColor(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function pad(n) { return String(n).padStart(2, "0"); }

  // Axis labels in 24-hour wall time: "HH:MM" within two days (the date under midnight),
  // "MM-DD" beyond.
  function timeLabels(u, splits) {
    const span = splits.length > 1 ? splits[splits.length - 1] - splits[0] : 0;
    return splits.map((ts) => {
      const d = new Date(ts * 1000);
      const date = pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate());
      if (span > 2 * 86400) return date;
      const time = pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
      return d.getUTCHours() === 0 && d.getUTCMinutes() === 0 ? time + "\n" + date : time;
    });
  }

  function drawChart(name, container, data, series, yFormat) {
    const previous = window.ovpnmon.charts[name];
    const width = Math.max(280, container.clientWidth - 16);
    const height = window.innerWidth < 600 ? 200 : 260;
    if (previous && previous.root.isConnected) {
      previous.setData(data);
      return previous;
    }
    const axis = { stroke: cssColor("--muted"), grid: { stroke: cssColor("--line") },
      ticks: { stroke: cssColor("--line") } };
    const chart = new uPlot({
      width: width,
      height: height,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      series: [{ label: "Time (" + state.timezone + ")" }].concat(series.map((s) => ({
        label: s.label, stroke: cssColor(s.color), width: 2, points: { show: false },
        value: (u, v) => (v === null || v === undefined ? "–" : s.format(v)),
      }))),
      axes: [Object.assign({ values: timeLabels }, axis),
        Object.assign({ size: 90, values: (u, splits) => splits.map(yFormat) }, axis)],
      cursor: { focus: { prox: 16 } },
    }, data, container);
    window.ovpnmon.charts[name] = chart;
    if (!window.ovpnmon.marks.firstChart) window.ovpnmon.marks.firstChart = performance.now();
    return chart;
  }

  window.addEventListener("resize", () => {
    for (const chart of Object.values(window.ovpnmon.charts)) {
      if (!chart.root.isConnected) continue;
      const width = Math.max(280, chart.root.parentNode.clientWidth - 16);
      chart.setSize({ width: width, height: window.innerWidth < 600 ? 200 : 260 });
    }
  });

  // --- pages --------------------------------------------------------------------------------------

  function rangeLinks(base, current, ranges, params) {
    return el("span", { class: "ranges", role: "group", "aria-label": "Range" },
      ranges.map((r) => el("a", {
        href: base + "?" + new URLSearchParams(Object.assign({}, params, { range: r })).toString(),
        "aria-current": r === current ? "true" : null, text: r })));
  }

  function overviewPage(main, params) {
    const range = ANALYTICS_RANGES.includes(params.get("range")) ? params.get("range") : "24h";
    const totals = el("div", { class: "cards", "aria-live": "polite" });
    const traffic = el("div", { class: "chart", role: "img", "aria-label": "Traffic per bucket" });
    const active = el("div", { class: "chart", role: "img", "aria-label": "Active clients per bucket" });
    const top = el("div", { class: "table-wrap" });
    const split = el("div");
    main.append(
      el("h1", { text: "Overview" }),
      el("div", { class: "controls" }, rangeLinks("#/", range, ANALYTICS_RANGES, {})),
      totals,
      el("h2", { id: "traffic-title", text: "Received and sent per bucket" }), traffic,
      el("h2", { text: "Active clients per bucket" }), active,
      el("h2", { text: "Traffic distribution" }), split,
      el("h2", { text: "Top clients" }), top);
    return async function refresh() {
      const [analytics, system] = await Promise.all([
        api("/analytics?range=" + range), api("/stats/system")]);
      const data = analytics.data;
      const xs = data.global_history_24h.map((p) => epoch(p.timestamp));
      document.getElementById("traffic-title").textContent = "Received and sent per " +
        Math.round(data.interval_seconds / 60) + " minutes";
      clear(totals).append(
        card("Clients (active / known)", system.data.active_clients + " / " + system.data.total_clients),
        card("Received, all time", number(system.data.total_received_gb, 2) + " GiB"),
        card("Sent, all time", number(system.data.total_sent_gb, 2) + " GiB"),
        card("Max concurrent (" + range + ")", String(data.max_concurrent_24h)),
        card("Last poll", system.data.last_poll || "none yet"));
      drawChart("overview-traffic", traffic, [
        xs,
        data.global_history_24h.map((p) => p.total_rx),
        data.global_history_24h.map((p) => p.total_tx),
      ], [
        { label: "Received", color: "--rx", format: bytes },
        { label: "Sent", color: "--tx", format: bytes },
      ], bytesShort);
      drawChart("overview-active", active, [
        xs, data.global_history_24h.map((p) => p.active_count),
      ], [{ label: "Active clients", color: "--active", format: (v) => String(v) }], String);
      const rx = data.traffic_distribution.rx, tx = data.traffic_distribution.tx;
      const share = rx + tx > 0 ? Math.round((rx / (rx + tx)) * 100) : 0;
      clear(split).append(
        el("p", { text: "Received " + bytes(rx) + " (" + share + " %) · sent " + bytes(tx) +
          " (" + (rx + tx > 0 ? 100 - share : 0) + " %) in " + range }),
        el("progress", { max: "100", value: String(share), "aria-label": "Share received" }));
      const rows = data.top_clients_24h.map((c) => el("tr", {},
        el("td", { class: "name" }, clientLink(c.common_name)),
        el("td", { class: "num", text: bytes(c.total_rx) }),
        el("td", { class: "num", text: bytes(c.total_tx) }),
        el("td", { class: "num", text: bytes(c.total) })));
      clear(top).append(el("table", { id: "top-clients" },
        el("caption", { class: "muted", text: rows.length ? "" : "No traffic in this range." }),
        el("thead", {}, el("tr", {}, el("th", { text: "Client" }), el("th", { class: "num", text: "Received" }),
          el("th", { class: "num", text: "Sent" }), el("th", { class: "num", text: "Total" }))),
        el("tbody", {}, rows)));
    };
  }

  const CLIENT_COLUMNS = [
    { key: "common_name", label: "Client", type: "text" },
    { key: "status", label: "Status", type: "text" },
    { key: "current_recv_rate_mbps", label: "Receiving (Mbit/s)", type: "num" },
    { key: "current_sent_rate_mbps", label: "Sending (Mbit/s)", type: "num" },
    { key: "total_received_mb", label: "Received (MiB)", type: "num" },
    { key: "total_sent_mb", label: "Sent (MiB)", type: "num" },
    { key: "sessions", label: "Sessions", type: "num", narrow: true },
    { key: "last_seen", label: "Last seen", type: "text", narrow: true },
  ];

  function clientsPage(main, params) {
    const view = {
      q: params.get("q") || "", active: params.get("active") === "1",
      sort: CLIENT_COLUMNS.some((c) => c.key === params.get("sort")) ? params.get("sort") : "common_name",
      desc: params.get("desc") === "1", rows: [],
    };
    const search = el("input", { type: "search", id: "client-filter", value: view.q,
      placeholder: "Filter by name" });
    const onlyActive = el("input", { type: "checkbox", id: "only-active", checked: view.active });
    const count = el("span", { class: "muted", "aria-live": "polite" });
    const head = el("tr");
    const body = el("tbody");
    const table = el("table", { id: "clients" }, el("thead", {}, head), body);
    main.append(el("h1", { text: "Clients" }),
      el("div", { class: "controls" },
        el("label", { for: "client-filter" }, "Name", search),
        el("label", { for: "only-active" }, onlyActive, "Active only"), count),
      el("div", { class: "table-wrap" }, table));

    function remember() {
      const p = new URLSearchParams();
      if (view.q) p.set("q", view.q);
      if (view.active) p.set("active", "1");
      if (view.sort !== "common_name") p.set("sort", view.sort);
      if (view.desc) p.set("desc", "1");
      const hash = "#/clients" + (p.toString() ? "?" + p.toString() : "");
      history.replaceState(null, "", hash);
      state.route = hash;
    }

    function header() {
      clear(head);
      for (const column of CLIENT_COLUMNS) {
        const sorted = view.sort === column.key;
        head.append(el("th", {
          class: (column.type === "num" ? "num" : "") + (column.narrow ? " hide-narrow" : ""),
          "aria-sort": sorted ? (view.desc ? "descending" : "ascending") : "none" },
        el("button", { type: "button", onclick: () => {
          view.desc = sorted ? !view.desc : column.type === "num";
          view.sort = column.key; remember(); header(); render();
        } }, column.label + (sorted ? (view.desc ? " ▼" : " ▲") : ""))));
      }
    }

    function render() {
      const needle = view.q.toLowerCase();
      const column = CLIENT_COLUMNS.find((c) => c.key === view.sort);
      const shown = view.rows.filter((row) =>
        (!view.active || row.status === "Active") &&
        (!needle || row.common_name.toLowerCase().includes(needle)));
      shown.sort((a, b) => {
        const x = a[column.key], y = b[column.key];
        let order = column.type === "num" ? Number(x) - Number(y)
          : String(x === null ? "" : x).localeCompare(String(y === null ? "" : y));
        if (order === 0) order = a.common_name < b.common_name ? -1 : 1;
        return view.desc ? -order : order;
      });
      const fragment = document.createDocumentFragment();
      for (const row of shown) {
        fragment.append(el("tr", {},
          el("td", { class: "name" }, clientLink(row.common_name)),
          el("td", {}, badge(row.status, row.status === "Active" ? "active" : "inactive")),
          el("td", { class: "num", text: row.current_recv_rate_mbps }),
          el("td", { class: "num", text: row.current_sent_rate_mbps }),
          el("td", { class: "num", text: row.total_received_mb }),
          el("td", { class: "num", text: row.total_sent_mb }),
          el("td", { class: "num hide-narrow", text: row.sessions }),
          el("td", { class: "hide-narrow", text: row.last_seen || "–" })));
      }
      clear(body).append(fragment);
      count.textContent = shown.length + " of " + view.rows.length + " clients";
      if (view.rows.length && !window.ovpnmon.marks.clientsTable) {
        window.ovpnmon.marks.clientsTable = performance.now();
      }
    }

    search.addEventListener("input", () => { view.q = search.value; remember(); render(); });
    onlyActive.addEventListener("change", () => { view.active = onlyActive.checked; remember(); render(); });
    header();
    return async function refresh() {
      const stats = await api("/stats");
      view.rows = stats.data;
      render();
    };
  }

  function clientPage(main, name, params) {
    const range = RANGES.includes(params.get("range")) ? params.get("range") : "24h";
    const resolution = RESOLUTIONS.includes(params.get("resolution")) ? params.get("resolution") : "auto";
    const base = "#/client/" + encodeURIComponent(name);
    const select = el("select", { id: "resolution" },
      RESOLUTIONS.map((r) => el("option", { value: r, selected: r === resolution, text: r })));
    select.addEventListener("change", () => {
      location.hash = base + "?" + new URLSearchParams({ range: range, resolution: select.value });
    });
    const summary = el("div", { class: "cards" });
    const chart = el("div", { class: "chart", role: "img", "aria-label": "Received and sent rates" });
    const note = el("p", { class: "muted" });
    const sessions = el("div", { class: "table-wrap" });
    main.append(el("h1", {}, "Client ", el("span", { id: "client-name", text: name })),
      el("div", { class: "controls" }, rangeLinks(base, range, RANGES, { resolution: resolution }),
        el("label", { for: "resolution" }, "Resolution", select)),
      summary, el("h2", { text: "Received and sent" }), chart, note,
      el("h2", { text: "Open sessions" }), sessions);
    return async function refresh() {
      const path = "/stats/" + encodeURIComponent(name) + "?" +
        new URLSearchParams({ range: range, resolution: resolution });
      const body = await api(path);
      const d = body.data;
      clear(summary).append(
        card("Status", d.status),
        card("Receiving now", d.current_rates.recv_mbps + " Mbit/s"),
        card("Sending now", d.current_rates.sent_mbps + " Mbit/s"),
        card("Received, all time", bytes(d.totals.received_bytes)),
        card("Sent, all time", bytes(d.totals.sent_bytes)),
        card("Connected since", d.connected_since || "not connected"),
        card("Last seen", d.last_seen || "–"));
      drawChart("client-history", chart, [
        d.history.map((p) => epoch(p.timestamp)),
        d.history.map((p) => p.bytes_received_rate_mbps),
        d.history.map((p) => p.bytes_sent_rate_mbps),
      ], [
        { label: "Received", color: "--rx", format: (v) => v + " Mbit/s" },
        { label: "Sent", color: "--tx", format: (v) => v + " Mbit/s" },
      ], (v) => v + " Mbit/s");
      note.textContent = d.meta.record_count + " points from " + d.meta.resolution_used +
        (d.meta.interval_seconds ? ", " + d.meta.interval_seconds + " s each" : ", samples as stored");
      const rows = d.sessions.map((s) => el("tr", {},
        el("td", { text: s.source }), el("td", { text: s.real_address }),
        el("td", { text: s.virtual_address || "–" }), el("td", { text: s.virtual_ipv6 || "–" }),
        el("td", { text: s.connected_since }),
        el("td", { class: "num", text: bytes(s.bytes_received) }),
        el("td", { class: "num", text: bytes(s.bytes_sent) })));
      clear(sessions).append(rows.length ? el("table", { id: "sessions" },
        el("thead", {}, el("tr", {}, ["Source", "Real address", "Virtual address", "Virtual IPv6",
          "Connected since", "Received", "Sent"].map((h, i) => el("th", { class: i > 4 ? "num" : "", text: h })))),
        el("tbody", {}, rows)) : el("p", { class: "muted", text: "No open session." }));
    };
  }

  function certificateRank(cert) {
    if (cert.is_expired) return 0;
    if (cert.revoked) return 1;
    if (parseInt(cert.days_remaining, 10) <= 30) return 2;
    return 3;
  }

  function certificatesPage(main) {
    const wrap = el("div", { class: "table-wrap" });
    const count = el("p", { class: "muted" });
    main.append(el("h1", { text: "Certificates" }), count, wrap);
    return async function refresh() {
      const body = await api("/certificates");
      const certs = body.data.slice().sort((a, b) =>
        certificateRank(a) - certificateRank(b) || (a.not_after < b.not_after ? -1 : 1));
      const rows = certs.map((c) => {
        const rank = certificateRank(c);
        const mark = rank === 0 ? badge("Expired", "bad") : rank === 1 ? badge("Revoked", "bad")
          : rank === 2 ? badge("Expires in " + c.days_remaining, "warn") : badge("Valid", "ok");
        return el("tr", { "data-rank": rank },
          el("td", {}, mark),
          el("td", { class: "name", text: c.common_name || "–" }),
          el("td", { class: "name", text: c.file }),
          el("td", { text: c.not_after }),
          el("td", { class: "num", text: c.days_remaining }),
          el("td", { class: "hide-narrow", text: c.serial }));
      });
      count.textContent = certs.length + " certificates; expired, revoked and expiring within 30 days first.";
      clear(wrap).append(el("table", { id: "certificates" },
        el("thead", {}, el("tr", {}, ["State", "Common name", "File", "Expires", "Days left", "Serial"]
          .map((h, i) => el("th", { class: i === 4 ? "num" : i === 5 ? "hide-narrow" : "", text: h })))),
        el("tbody", {}, rows)));
    };
  }

  // --- routing and refreshing ---------------------------------------------------------------------

  function parseRoute() {
    const hash = location.hash.replace(/^#/, "") || "/";
    const [path, query] = hash.split("?");
    return { path: path, params: new URLSearchParams(query || "") };
  }

  async function refresh() {
    const page = state.page;
    await checkHealth();
    if (!page) return;
    try {
      await page();
      window.ovpnmon.refreshed += 1;
    } catch (error) {
      if (page !== state.page) return;
      const main = document.getElementById("main");
      const old = main.querySelector(".page-error");
      if (old) old.remove();
      main.prepend(el("p", { class: "page-error badge bad", role: "alert",
        text: error.status === 404 ? error.message : "Could not load this page: " + error.message }));
    }
  }

  function schedule() {
    clearTimeout(state.timer);
    state.timer = setTimeout(async () => { await refresh(); schedule(); },
      Math.max(2, state.interval) * 1000);
  }

  function navigate() {
    const { path, params } = parseRoute();
    state.route = location.hash;
    const main = clear(document.getElementById("main"));
    window.ovpnmon.charts = {};
    let section = "overview";
    if (path === "/clients") {
      section = "clients";
      state.page = clientsPage(main, params);
    } else if (path.startsWith("/client/")) {
      section = "clients";
      state.page = clientPage(main, decodeURIComponent(path.slice("/client/".length)), params);
    } else if (path === "/certificates") {
      section = "certificates";
      state.page = certificatesPage(main);
    } else {
      state.page = overviewPage(main, params);
    }
    for (const link of document.querySelectorAll("nav a")) {
      link.setAttribute("aria-current", link.dataset.section === section ? "page" : "false");
    }
    document.title = "ovpnmon · " + section;
    main.focus({ preventScroll: true });
    refresh().then(schedule);
  }

  window.addEventListener("hashchange", () => {
    if (location.hash !== state.route) navigate();
  });
  document.addEventListener("DOMContentLoaded", () => {
    setupTokenForm();
    // the skip link moves focus without touching the hash (the hash is the route)
    document.querySelector(".skip").addEventListener("click", (event) => {
      event.preventDefault();
      document.getElementById("main").focus();
    });
    navigate();
  });
})();
