// The boshy-istio console: reads the pilot's API beside this page (relative URLs, so it works
// served by the pilot at /console/ and through `boshy mesh console`) and redraws every few
// seconds. Every value from the API goes into the page as text, never as markup.
"use strict";

const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";
const API = { graph: "../v1/graph", registration: "../v1/registration", proxies: "../v1/proxies", rules: "../v1/rules", workloads: "../v1/workloads" };
const TYPES = ["cds", "lds", "eds", "rds"];

// Layout of the graph, in pixels.
const COLUMN = 390, GAP = 170, PAD = 12, TITLE = 24, ROW = 20, GROUP_TITLE = 22, MARGIN = 20;

function el(name, attrs, text) {
  const node = document.createElement(name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function row(cells) {
  const tr = el("tr");
  for (const cell of cells) {
    const [text, cls] = Array.isArray(cell) ? cell : [cell, undefined];
    tr.append(el("td", cls ? { class: cls } : {}, String(text)));
  }
  return tr;
}

function fill(table, rows, empty) {
  const body = document.querySelector(`#${table} tbody`);
  body.replaceChildren(...rows);
  if (rows.length === 0) {
    const cols = document.querySelectorAll(`#${table} thead th`).length;
    const note = el("tr");
    note.append(el("td", { colspan: cols, class: "empty-note" }, empty));
    body.append(note);
  }
}

function rate(value) {
  return value >= 10 ? value.toFixed(0) : value >= 1 ? value.toFixed(1) : value.toFixed(2);
}

function percent(ratio) {
  return (ratio * 100).toFixed(ratio > 0 && ratio < 0.01 ? 2 : 1) + "%";
}

function ms(value) {
  return value === null || value === undefined ? "–" : value >= 1000 ? (value / 1000).toFixed(2) + " s" : value.toFixed(1) + " ms";
}

function groupName(g) {
  return `${g.deployment}/${g.instance_group}`;
}

function health(service) {
  const total = service.healthy_endpoints + service.unhealthy_endpoints;
  if (total === 0) return "empty";
  if (service.unhealthy_endpoints === 0) return "ok";
  return service.healthy_endpoints === 0 ? "none" : "some";
}

function edgeLabel(edge) {
  const parts = [];
  if (edge.requests_per_second > 0 || edge.p99_ms !== null) {
    parts.push(`${rate(edge.requests_per_second)} req/s`, `${percent(edge.error_ratio)} err`, `p99 ${ms(edge.p99_ms)}`);
  }
  if (edge.connections_per_second > 0) parts.push(`${rate(edge.connections_per_second)} conn/s`);
  return parts.join(" · ");
}

// Deployments side by side, instance groups stacked inside them, a row per service; edges
// from the calling group's box to the called service's row.
function drawGraph(graph) {
  const root = document.getElementById("graph");
  const groupBoxes = new Map();
  const serviceRows = new Map();
  const layer = svg("g");
  let height = 0;
  graph.deployments.forEach((deployment, column) => {
    const x = MARGIN + column * (COLUMN + GAP);
    const box = svg("g", { class: "deployment", "data-deployment": deployment.name });
    let y = MARGIN + TITLE;
    const groups = svg("g");
    for (const group of deployment.instance_groups) {
      const rows = Math.max(group.services.length, 1);
      const h = GROUP_TITLE + rows * ROW + PAD / 2;
      const g = svg("g", { class: "group", "data-group": `${deployment.name}/${group.name}` });
      g.append(svg("rect", { x: x + PAD, y, width: COLUMN - 2 * PAD, height: h, rx: 4 }));
      g.append(svg("text", { x: x + 2 * PAD, y: y + 16, class: "name" }, group.name));
      if (group.reporting_instances > 0) {
        g.append(svg("text", { x: x + COLUMN - 2 * PAD, y: y + 16, class: "note", "text-anchor": "end" },
          `${group.reporting_instances} reporting`));
      }
      groupBoxes.set(`${deployment.name}/${group.name}`, { x: x + PAD, y, w: COLUMN - 2 * PAD, h });
      group.services.forEach((service, i) => {
        const sy = y + GROUP_TITLE + i * ROW + ROW / 2;
        const s = svg("g", { class: "service", "data-service": service.hostname });
        s.append(svg("circle", { cx: x + 2 * PAD + 5, cy: sy, r: 5, class: health(service) }));
        const label = svg("text", { x: x + 2 * PAD + 16, y: sy + 4 }, service.hostname);
        label.append(svg("title", {}, `${service.hostname} ${service.vip} ports ${service.ports.join(", ")}: ` +
          `${service.healthy_endpoints} healthy, ${service.unhealthy_endpoints} unhealthy`));
        s.append(label);
        g.append(s);
        serviceRows.set(service.hostname, { x: x + PAD, y: sy, w: COLUMN - 2 * PAD });
      });
      if (group.services.length === 0) {
        g.append(svg("text", { x: x + 2 * PAD, y: y + GROUP_TITLE + 14, class: "note" }, "calls only"));
      }
      groups.append(g);
      y += h + PAD;
    }
    box.append(svg("rect", { x, y: MARGIN, width: COLUMN, height: y - MARGIN, rx: 6 }));
    box.append(svg("text", { x: x + PAD, y: MARGIN + 17 }, deployment.name));
    box.append(groups);
    layer.append(box);
    height = Math.max(height, y);
  });
  const edges = svg("g");
  const labels = [];
  for (const edge of graph.edges) {
    const from = groupBoxes.get(groupName(edge.source));
    const to = serviceRows.get(edge.destination);
    if (!from || !to) continue;
    const fy = from.y + GROUP_TITLE / 2 + 4;
    let d, lx, ly;
    if (Math.abs(from.x - to.x) < 1) {
      // Same column: a loop out to the right.
      const sx = from.x + from.w, tx = to.x + to.w, bulge = 50;
      d = `M${sx},${fy} C${sx + bulge},${fy} ${tx + bulge},${to.y} ${tx},${to.y}`;
      lx = Math.max(sx, tx) + bulge / 2; ly = (fy + to.y) / 2;
    } else {
      const rightward = to.x > from.x;
      const sx = rightward ? from.x + from.w : from.x, tx = rightward ? to.x : to.x + to.w;
      const mid = (sx + tx) / 2;
      d = `M${sx},${fy} C${mid},${fy} ${mid},${to.y} ${tx},${to.y}`;
      lx = mid; ly = (fy + to.y) / 2 - 4;
    }
    const cls = edge.error_ratio > 0.05 || edge.failed_connection_ratio > 0.05 ? "bad"
      : edge.error_ratio > 0 || edge.failed_connection_ratio > 0 ? "some" : "ok";
    const width = 1.5 + Math.min(4, Math.log10(1 + edge.requests_per_second + edge.connections_per_second) * 2);
    const g = svg("g", { class: `edge ${cls}`, "data-edge": `${groupName(edge.source)} to ${edge.destination}` });
    g.append(svg("path", { d, "stroke-width": width.toFixed(1), "marker-end": "url(#arrow)" }));
    const text = edgeLabel(edge);
    ly = freeLine(labels, lx, ly, text.length * 6.2);
    g.append(svg("text", { x: lx, y: ly, "text-anchor": "middle" }, text));
    edges.append(g);
  }
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }));
  defs.append(marker);
  const width = MARGIN * 2 + graph.deployments.length * (COLUMN + GAP) + 40;
  root.setAttribute("width", width);
  root.setAttribute("height", height + MARGIN);
  root.setAttribute("viewBox", `0 0 ${width} ${height + MARGIN}`);
  root.replaceChildren(defs, layer, edges);

  fill("edges", graph.edges.map((e) => {
    const tr = row([groupName(e.source), e.destination, [rate(e.requests_per_second), "num"],
      [percent(e.error_ratio), "num"], [ms(e.p99_ms), "num"], [rate(e.connections_per_second), "num"],
      [e.reporting_instances, "num"]]);
    tr.setAttribute("data-edge", `${groupName(e.source)} to ${e.destination}`);
    return tr;
  }), "No calls reported in the last window.");
}

// The label's y moved down, a line at a time, until it overlaps no label placed before.
function freeLine(placed, x, y, width) {
  const overlaps = (b) => Math.abs(b.x - x) < (b.width + width) / 2 && Math.abs(b.y - y) < 14;
  while (placed.some(overlaps)) y += 14;
  placed.push({ x, y, width });
  return y;
}

function drawVips(services) {
  fill("vips", services.map((s) => {
    const healthy = s.endpoints.filter((e) => e.healthy).length;
    const ports = s.ports.map((p) => `${p.number}/${p.protocol}`).join(", ");
    return row([s.hostname, s.vip, ports, [`${healthy} of ${s.endpoints.length}`, "num"]]);
  }), "No services.");
}

function ago(unix) {
  if (!unix) return "never";
  const seconds = Math.max(0, Math.round(Date.now() / 1000 - unix));
  return seconds < 120 ? `${seconds} s ago` : `${Math.round(seconds / 60)} min ago`;
}

function drawProxies(report) {
  const nacks = [];
  fill("proxies", report.proxies.map((p) => {
    const instance = p.deployment ? `${p.deployment}/${p.instance_group}/${p.index ?? p.instance_id}` : "–";
    const states = TYPES.map((t) => {
      const status = p.types[t];
      if (status && status.state === "NACK" && status.last_nack) {
        nacks.push(`${instance} ${t.toUpperCase()}: ${status.last_nack.error}`);
      }
      return status ? [status.state, status.state.replace(" ", "-")] : ["–"];
    });
    return row([p.node, instance, ...states, [p.snapshots_behind, "num"], ago(p.last_sync)]);
  }), "No Envoy is connected to this pilot.");
  document.getElementById("nacks").replaceChildren(...nacks.map((n) => el("li", {}, n)));
}

// The VMs registered into WorkloadGroups (docs/workloads.md), with their liveness.
function drawRegistrations(listing) {
  fill("registrations", listing.registrations.map((r) => {
    const probe = r.probe ? (r.probe.passing ? "passing" : `failing: ${r.probe.detail}`) : "–";
    const tr = row([r.group, r.instance, r.address, [r.state, r.state],
      ago(r.last_heartbeat_ms && r.last_heartbeat_ms / 1000), probe]);
    tr.setAttribute("data-registration", r.id);
    return tr;
  }), "No VM outside BOSH is registered.");
}

function drawRules(configs) {
  fill("rules", configs.map((c) => {
    const v = c.verdict;
    const status = v ? v.status : "being judged";
    const findings = v ? [...v.errors, ...v.warnings.map((w) => `warning: ${w}`)].join("\n") : "";
    return row([c.name, [status, status.split(" ")[0]], v ? v.accepted.join(", ") : "", findings]);
  }), "No rule configs in the director.");
}

async function read(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) {
    throw new Error(`${path}: ${response.status} ${(await response.text()).trim()}`);
  }
  return response.json();
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [graph, registration, proxies] = await Promise.all([read(API.graph), read(API.registration), read(API.proxies)]);
    drawGraph(graph);
    drawVips(registration);
    drawProxies(proxies);
    // The director's rule configs may not be read yet (503): the rest still shows.
    let rules = "rule configs not read yet";
    try {
      const configs = await read(API.rules);
      drawRules(configs);
      rules = `${configs.length} rule configs`;
    } catch (err) {
      fill("rules", [], String(err.message));
    }
    // A pilot without `workloads` answers 404 with its reason: shown in the table.
    try {
      drawRegistrations(await read(API.workloads));
    } catch (err) {
      fill("registrations", [], String(err.message));
    }
    const snapshot = proxies.snapshot ? `snapshot ${proxies.snapshot.seq}` : "no snapshot yet";
    status.className = "";
    status.textContent = `${registration.length} services · ${proxies.proxies.length} Envoys · ` +
      `${proxies.agents.length} agents · ${snapshot} · ${rules} · updated ${new Date().toLocaleTimeString()}`;
    document.body.setAttribute("data-loaded", "true");
  } catch (err) {
    status.className = "error";
    status.textContent = `cannot read the pilot: ${err.message}`;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
