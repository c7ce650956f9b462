// The kelp console: plain JS, no build step. Each view loads from the gateway's /api; the
// live tail is a WebSocket to the console's tail address (given by /api/overview).
"use strict";

const $ = (selector) => document.querySelector(selector);
const views = ["overview", "topics", "messages", "groups", "schemas"];
let tailSocket = null;
let tailUrl = null;
const samples = [];  // {t, records, lag} from /api/totals, for the charts

async function api(path, options) {
  const reply = await fetch(path, options);
  const body = await reply.json();
  if (!reply.ok) throw new Error(body.message || body.error || reply.statusText);
  return body;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function shown(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

function say(text, isError) {
  const status = $("#status");
  status.textContent = text;
  status.className = isError ? "error" : "";
}

// -- views ---------------------------------------------------------------------------------

async function showOverview() {
  const overview = await api("/api/overview");
  tailUrl = overview.tail;
  const health = $("#health");
  health.replaceChildren();
  const facts = {
    "broker": overview.broker.status, "version": overview.broker.version,
    "topics": overview.broker.topics, "partitions": overview.broker.partitions,
    "gateway connections": overview.gateway.connections,
    "gateway tasks": overview.gateway.tasks, "live tails": overview.gateway.tails,
    "schema registry": overview.registry ? "served" : "off",
  };
  for (const [name, value] of Object.entries(facts)) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = String(value);
    dd.id = "health-" + name.replace(/ /g, "-");
    health.append(dt, dd);
  }
  drawCharts();
}

async function showTopics() {
  const topics = await api("/api/topics");
  const body = $("#topics-table tbody");
  body.replaceChildren();
  const select = $("#browse-topic");
  const chosen = select.value;
  select.replaceChildren();
  for (const topic of topics) {
    const row = document.createElement("tr");
    row.dataset.topic = topic.name;
    cell(row, topic.name);
    cell(row, topic.partitions.length);
    cell(row, topic.partitions.reduce((n, p) => n + p.end - p.start, 0));
    cell(row, topic.partitions.reduce((n, p) => n + p.bytes, 0));
    cell(row, Object.entries(topic.configs).map(([k, v]) => k + "=" + v).join(", "));
    const actions = cell(row, "");
    if (!topic.internal) {
      const remove = document.createElement("button");
      remove.className = "delete";
      remove.textContent = "Delete";
      remove.onclick = async () => {
        if (!confirm("Delete topic " + topic.name + "?")) return;
        await api("/api/topics/" + encodeURIComponent(topic.name), { method: "DELETE" });
        showTopics();
      };
      actions.appendChild(remove);
    }
    body.appendChild(row);
    const option = document.createElement("option");
    option.value = option.textContent = topic.name;
    select.appendChild(option);
  }
  if (chosen) select.value = chosen;
}

function recordRow(record) {
  const row = document.createElement("tr");
  row.dataset.offset = record.offset;
  cell(row, record.offset);
  cell(row, record.timestamp ? new Date(record.timestamp).toISOString() : "");
  cell(row, shown(record.key), "value");
  cell(row, record.error ? record.error : shown(record.value), "value");
  cell(row, Object.entries(record.headers || {}).map(([k, v]) => k + "=" + shown(v))
    .join(", "), "value");
  return row;
}

async function browse(event) {
  event.preventDefault();
  const form = event.target;
  const topic = form.topic.value;
  const query = new URLSearchParams({ partition: form.partition.value || "0", limit: "100" });
  if (form.time.value) query.set("timestamp", String(new Date(form.time.value).getTime()));
  else query.set("offset", form.offset.value || "0");
  const page = await api("/api/topics/" + encodeURIComponent(topic) + "/messages?" + query);
  const body = $("#messages-table tbody");
  body.replaceChildren(...page.records.map(recordRow));
  say(page.records.length + " records of " + topic + " (log " + page.start + ".." + page.end
      + ")");
}

async function startTail() {
  stopTail();
  const form = $("#browse");
  const topic = form.topic.value;
  const partition = form.partition.value || "0";
  // A WebSocket carries no credentials: the API (which checks them) hands out a ticket.
  const ticket = await api("/api/tail-ticket?" + new URLSearchParams({ topic, partition }));
  const url = tailUrl + "/tail/" + encodeURIComponent(topic) + "/" + partition + "?from=end"
    + "&ticket=" + encodeURIComponent(ticket.ticket);
  const body = $("#messages-table tbody");
  body.replaceChildren();
  tailSocket = new WebSocket(url);
  $("#tail-start").disabled = true;
  $("#tail-stop").disabled = false;
  tailSocket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.tailing !== undefined) {
      $("#tail-state").textContent = "tailing " + message.tailing + "-" + message.partition
        + " from offset " + message.from;
      $("#tail-state").dataset.ready = "true";
    } else if (message.behind) {
      const row = document.createElement("tr");
      row.className = "behind";
      const td = cell(row, "you are behind: records skipped, resumed at offset "
                      + message.resumed_at);
      td.colSpan = 5;
      body.prepend(row);
    } else if (message.records) {
      for (const record of message.records) body.prepend(recordRow(record));
      while (body.children.length > 500) body.lastChild.remove();
    } else if (message.error) {
      say(message.error, true);
    }
  };
  tailSocket.onclose = () => {
    $("#tail-start").disabled = false;
    $("#tail-stop").disabled = true;
  };
}

function stopTail() {
  if (tailSocket) tailSocket.close();
  tailSocket = null;
  $("#tail-state").textContent = "";
  delete $("#tail-state").dataset.ready;
}

async function showGroups() {
  const groups = await api("/api/groups");
  const body = $("#groups-table tbody");
  body.replaceChildren();
  for (const group of groups) {
    const row = document.createElement("tr");
    row.dataset.group = group.group;
    cell(row, group.group);
    cell(row, group.type);
    cell(row, group.state);
    cell(row, group.lag).className = "lag";
    cell(row, group.partitions.map((p) => p.topic + "-" + p.partition + ": "
      + p.committed + "/" + p.end).join(", "));
    body.appendChild(row);
  }
}

async function showSchemas() {
  let subjects = [];
  try {
    subjects = await api("/api/subjects");
  } catch (error) {
    say(error.message, true);
  }
  const body = $("#subjects-table tbody");
  body.replaceChildren();
  for (const subject of subjects) {
    const row = document.createElement("tr");
    row.dataset.subject = subject.subject;
    cell(row, subject.subject);
    const versions = cell(row, "");
    for (const version of subject.versions) {
      const link = document.createElement("a");
      link.href = "#schemas";
      link.textContent = "v" + version.version + " (id " + version.id + ") ";
      link.onclick = async () => {
        const found = await api("/api/subjects/" + encodeURIComponent(subject.subject)
                                + "/versions/" + version.version);
        $("#schema-text").textContent = found.schema;
      };
      versions.appendChild(link);
    }
    body.appendChild(row);
  }
}

async function diff(event) {
  event.preventDefault();
  const form = event.target;
  const query = new URLSearchParams({ from: form.from.value || "1",
                                      to: form.to.value || "latest" });
  const found = await api("/api/subjects/" + encodeURIComponent(form.subject.value)
                          + "/diff?" + query);
  const text = $("#schema-text");
  text.replaceChildren();
  for (const line of found.diff.split("\n")) {
    const span = document.createElement("span");
    span.textContent = line + "\n";
    if (line.startsWith("+") && !line.startsWith("+++")) span.className = "add";
    if (line.startsWith("-") && !line.startsWith("---")) span.className = "del";
    text.appendChild(span);
  }
}

// -- charts: records written per second and total lag, sampled every 2 s -----------------

async function sample() {
  try {
    const totals = await api("/api/totals");
    samples.push({ t: Date.now(), records: totals.records, lag: totals.lag });
    while (samples.length > 150) samples.shift();
    if (!$("#overview").hidden) drawCharts();
  } catch (error) {
    say("cannot reach the gateway: " + error.message, true);
  }
}

function drawLine(canvas, points) {
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (points.length < 2) return;
  const top = Math.max(1, ...points);
  context.strokeStyle = "#12384a";
  context.beginPath();
  points.forEach((value, i) => {
    const x = (i / (points.length - 1)) * (canvas.width - 10) + 5;
    const y = canvas.height - 5 - (value / top) * (canvas.height - 20);
    if (i === 0) context.moveTo(x, y); else context.lineTo(x, y);
  });
  context.stroke();
  context.fillText("max " + Math.round(top), 5, 12);
}

function drawCharts() {
  const rates = [];
  for (let i = 1; i < samples.length; i++) {
    const seconds = (samples[i].t - samples[i - 1].t) / 1000;
    rates.push(Math.max(0, samples[i].records - samples[i - 1].records) / seconds);
  }
  drawLine($("#chart-throughput"), rates);
  drawLine($("#chart-lag"), samples.map((s) => s.lag));
}

// -- navigation ----------------------------------------------------------------------------

const loaders = { overview: showOverview, topics: showTopics, messages: showTopics,
                  groups: showGroups, schemas: showSchemas };

async function show(view) {
  if (!views.includes(view)) view = "overview";
  for (const name of views) {
    $("#" + name).hidden = name !== view;
    document.querySelector('nav a[data-view="' + name + '"]').classList
      .toggle("active", name === view);
  }
  try {
    await loaders[view]();
    document.body.dataset.loaded = view;
  } catch (error) {
    say(error.message, true);
  }
}

window.addEventListener("hashchange", () => show(location.hash.slice(1)));
$("#browse").addEventListener("submit", (event) => browse(event).catch((e) => say(e.message, true)));
$("#tail-start").addEventListener("click", () => startTail().catch((e) => say(e.message, true)));
$("#tail-stop").addEventListener("click", stopTail);
$("#diff").addEventListener("submit", (event) => diff(event).catch((e) => say(e.message, true)));
$("#create-topic").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  try {
    await api("/api/topics", { method: "POST", body: JSON.stringify({
      name: form.name.value, partitions: Number(form.partitions.value) }) });
    form.reset();
    showTopics();
  } catch (error) {
    say(error.message, true);
  }
});
window.addEventListener("beforeunload", stopTail);
api("/api/overview").then((o) => { tailUrl = o.tail; }).catch(() => {});
show(location.hash.slice(1));
sample();
setInterval(sample, 2000);
