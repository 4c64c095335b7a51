// The demo page of serve.py (docs/demo-page.md). Plain JavaScript, no build step and no
// external URLs: it talks only to the server that served it, through relative URLs
// (GET info, POST translate, POST caption), so it works offline and under any prefix.
"use strict";

const $ = (id) => document.getElementById(id);
const DEFAULT_BEAM = { translate: 5, caption: 3 };
const FALLBACK_MAX_BEAM = 10;
const PANEL_SIZE = 128; // pixels of one caption attention panel

// --- the API ---------------------------------------------------------------------------

// The server's error in one line: {"error": ...}, FastAPI's {"detail": ...} (a string or
// a list of validation problems), or the HTTP status when the body is not JSON.
function errorMessage(status, statusText, body) {
  let message = `HTTP ${status} ${statusText}`.trim();
  if (body && typeof body.error === "string") {
    message = body.error;
  } else if (body && typeof body.detail === "string") {
    message = body.detail;
  } else if (body && Array.isArray(body.detail) && body.detail.length) {
    message = body.detail.map((d) => [...(d.loc || []), d.msg].join(": ")).join("; ");
  }
  return message.split("\n")[0];
}

async function callApi(path, body) {
  let response;
  try {
    response = await fetch(path, body === undefined ? {} : {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (e) {
    throw new Error(`the server did not answer ${path} (${e.message})`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null; // not JSON: the status line says enough
  }
  if (!response.ok) {
    throw new Error(errorMessage(response.status, response.statusText, data));
  }
  if (data === null) {
    throw new Error(`${path}: the server's answer is not JSON`);
  }
  return data;
}

function showError(message) {
  const box = $("error");
  box.textContent = String(message).split("\n")[0];
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// --- startup: what the server serves ---------------------------------------------------

function fillBeams(select, maxBeam, preferred) {
  select.replaceChildren();
  for (let k = 1; k <= maxBeam; k++) {
    select.append(new Option(k === 1 ? "1 (greedy)" : String(k), String(k)));
  }
  select.value = String(Math.min(preferred, maxBeam));
}

// "model best.ckpt · 12,345 parameters · cpu" from /info's model summary.
function describe(model) {
  if (!model || typeof model !== "object") return "";
  const checkpoint = model.checkpoint;
  const parts = [];
  if (Array.isArray(checkpoint)) parts.push(`an ensemble of ${checkpoint.length} models`);
  else if (checkpoint) parts.push(`model ${String(checkpoint).split(/[\\/]/).pop()}`);
  if (model.parameters) parts.push(`${Number(model.parameters).toLocaleString("en")} parameters`);
  if (model.device) parts.push(String(model.device));
  return parts.join(" · ");
}

async function start() {
  let info = { translate: true, caption: false };
  try {
    info = await callApi("info");
  } catch (e) {
    showError(e.message);
  }
  const limits = info.limits || {};
  const maxBeam = Number(limits.max_beam_size || limits.max_beam) || FALLBACK_MAX_BEAM;
  fillBeams($("beam"), maxBeam, DEFAULT_BEAM.translate);
  fillBeams($("caption-beam"), maxBeam, DEFAULT_BEAM.caption);
  const served = [info.translate && "translation", info.caption && "captioning"]
    .filter(Boolean).join(" and ") || "nothing";
  const summary = describe(info.model);
  $("model-info").textContent = `Serving ${served}.` + (summary ? ` ${summary}` : "");
  $("translate-panel").hidden = !info.translate;
  $("caption-panel").hidden = !info.caption;
  document.body.dataset.ready = "true"; // the browser test waits for this
}

// --- translation -----------------------------------------------------------------------

// White to dark blue: a weight of 0 leaves the cell white, 1 makes it darkest.
function weightColour(w) {
  const t = Math.max(0, Math.min(1, w));
  const mix = (from, to) => Math.round(from + (to - from) * t);
  return `rgb(${mix(255, 8)}, ${mix(255, 48)}, ${mix(255, 107)})`;
}

// Labels for n rows or columns: the pieces, and "</s>" for the one EOS beyond them.
function labels(pieces, n) {
  return Array.from({ length: n }, (_, i) => (i < pieces.length ? pieces[i] : "</s>"));
}

// The attention as a table: one row per target piece (and EOS), one column per source
// piece (and EOS); each cell's colour, title and data-weight carry its weight.
function heatmap(attention, sourcePieces, targetPieces) {
  const cols = attention[0].length;
  const colLabels = labels(sourcePieces || [], cols);
  const rowLabels = labels(targetPieces || [], attention.length);
  const table = document.createElement("table");
  table.className = "heatmap";
  const head = table.createTHead().insertRow();
  head.append(document.createElement("th"));
  for (const label of colLabels) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = label;
    head.append(th);
  }
  const body = table.createTBody();
  attention.forEach((weights, r) => {
    const row = body.insertRow();
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = rowLabels[r];
    row.append(th);
    weights.forEach((w, c) => {
      const cell = row.insertCell();
      cell.style.backgroundColor = weightColour(w);
      cell.dataset.weight = String(w);
      cell.title = `${rowLabels[r]} → ${colLabels[c]}: ${w.toFixed(3)}`;
    });
  });
  return table;
}

function resultItem(line, translation, index) {
  const item = document.createElement("li");
  item.className = "result";
  const source = document.createElement("div");
  source.className = "muted source";
  source.textContent = line;
  const target = document.createElement("div");
  const text = document.createElement("span");
  text.className = "translation";
  text.textContent = translation.text;
  target.append(text);
  if (!line.trim()) {
    text.classList.add("empty");
    text.textContent = "(empty line)"; // kept in place, so the lines stay aligned
  } else {
    if (!translation.text) {
      text.classList.add("empty");
      text.textContent = "(empty translation)";
    }
    const score = document.createElement("span");
    score.className = "muted score";
    score.dataset.score = String(translation.score);
    score.textContent = ` score ${Number(translation.score).toFixed(3)}`;
    target.append(score);
  }
  item.append(source, target);
  const attention = translation.attention;
  if (Array.isArray(attention) && attention.length && attention[0].length) {
    const wrap = document.createElement("div");
    wrap.className = "heatmap-wrap";
    const table = heatmap(attention, translation.source_pieces, translation.target_pieces);
    table.id = `heatmap-${index}`;
    wrap.append(table);
    item.append(wrap);
  }
  return item;
}

let translateRequest = 0; // only the latest request's answer is shown

async function translate() {
  const lines = $("source").value.split(/\r?\n/);
  while (lines.length && !lines[lines.length - 1].trim()) lines.pop(); // a pasted final newline
  const output = $("output");
  if (!lines.length) {
    showError("Type a sentence first (one per line).");
    return;
  }
  const request = ++translateRequest;
  clearError();
  output.dataset.state = "busy";
  $("translate").disabled = true;
  $("status").textContent = "Translating…";
  const started = performance.now();
  try {
    const data = await callApi("translate", {
      text: lines, beam_size: Number($("beam").value), attention: true,
    });
    if (request !== translateRequest) return;
    output.replaceChildren(...data.translations.map((t, i) => resultItem(lines[i], t, i)));
    const ms = Math.round(performance.now() - started);
    $("status").textContent = `${lines.length} line(s) in ${ms} ms`;
    output.dataset.state = "done";
  } catch (e) {
    if (request !== translateRequest) return;
    showError(e.message);
    $("status").textContent = "";
    output.replaceChildren(); // the results of other text would mislead
    output.dataset.state = "error";
  } finally {
    if (request === translateRequest) $("translate").disabled = false;
  }
}

// --- captioning ------------------------------------------------------------------------

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`${file.name}: could not be read`));
    reader.readAsDataURL(file);
  });
}

// The image as the model saw it (shorter side scaled, centre square, nmt/data/images.py),
// with the grid's cells dimmed by how little attention they got and tinted by how much.
function attentionPanel(image, weights, grid, label) {
  const [rows, cols] = grid;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = PANEL_SIZE;
  const ctx = canvas.getContext("2d");
  const side = Math.min(image.width, image.height);
  ctx.drawImage(image, (image.width - side) / 2, (image.height - side) / 2, side, side,
    0, 0, PANEL_SIZE, PANEL_SIZE);
  const top = Math.max(...weights) || 1;
  const cw = PANEL_SIZE / cols;
  const ch = PANEL_SIZE / rows;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      // Cell r * cols + c, row-major as the encoder's grid (nmt/captioner.py). Dimming
      // alone would not show attention on a black background: attended cells get a tint.
      const share = weights[r * cols + c] / top;
      ctx.fillStyle = `rgba(0, 0, 0, ${0.7 * (1 - share)})`;
      ctx.fillRect(c * cw, r * ch, cw, ch);
      ctx.fillStyle = `rgba(255, 210, 0, ${0.5 * share})`;
      ctx.fillRect(c * cw, r * ch, cw, ch);
    }
  }
  const figure = document.createElement("figure");
  const caption = document.createElement("figcaption");
  caption.textContent = label;
  figure.append(canvas, caption);
  return figure;
}

let captionRequest = 0;

async function caption(file) {
  if (!file) return;
  const request = ++captionRequest;
  const out = $("caption-output");
  clearError();
  out.dataset.state = "busy";
  $("caption-status").textContent = `Captioning ${file.name}…`;
  try {
    const dataUrl = await readDataUrl(file);
    const data = await callApi("caption", {
      image: dataUrl, beam_size: Number($("caption-beam").value), attention: true,
    });
    if (request !== captionRequest) return;
    $("caption").textContent = data.caption;
    $("caption-score").textContent = Number(data.score).toFixed(3);
    const panels = [];
    if (Array.isArray(data.attention) && data.attention.length && data.grid) {
      const image = await createImageBitmap(file);
      const words = labels(data.words || [], data.attention.length);
      data.attention.forEach((w, i) => panels.push(attentionPanel(image, w, data.grid, words[i])));
    }
    $("caption-attention").replaceChildren(...panels);
    out.hidden = false;
    $("caption-status").textContent = file.name;
    out.dataset.state = "done";
  } catch (e) {
    if (request !== captionRequest) return;
    showError(e.message);
    $("caption-status").textContent = "";
    out.dataset.state = "error";
  }
}

// --- wiring ----------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("translate").addEventListener("click", translate);
  $("source").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      translate();
    }
  });
  const drop = $("drop");
  $("image").addEventListener("change", () => {
    const file = $("image").files[0];
    $("image").value = ""; // choosing the same file again still captions it
    caption(file);
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") $("image").click();
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    caption(e.dataTransfer.files[0]);
  });
  start();
});
