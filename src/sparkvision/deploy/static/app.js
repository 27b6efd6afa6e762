// sparkvision web page: each chosen or dropped image goes to POST /v1/predict on its own
// (the server batches concurrent requests). A classifier's top-5 classes are drawn as
// bars; a detector's boxes are drawn over the image, one colour per class, and listed.
"use strict";

const TOP_K = 5;
// Distinct colours for the first classes; later ones step round the hue circle.
const PALETTE = ["#e03131", "#1971c2", "#2f9e44", "#f08c00", "#9c36b5", "#0c8599", "#e64980", "#5c940d",
  "#3b5bdb", "#862e9c"];
const drop = document.getElementById("drop");
const input = document.getElementById("files");
const results = document.getElementById("results");
const statusLine = document.getElementById("status");
let pending = 0;

function setStatus(verb) {
  statusLine.textContent = pending ? `${verb} ${pending} image${pending > 1 ? "s" : ""}…` : "";
}

async function loadModel() {
  const el = document.getElementById("model");
  try {
    const response = await fetch("/v1/models");
    const body = await response.json();
    const model = body.models[0];
    const what = model.task === "detect"
      ? `detector · ${model.num_classes} classes (${model.classes.join(", ")})`
      : `${model.num_classes} classes`;
    el.textContent = `${model.name} · ${what} · input ${model.input_size.join("×")} · version ${model.version}`;
    document.body.dataset.task = model.task;
    return model;
  } catch (err) {
    el.textContent = "model information unavailable";
    return { task: "classify", classes: [] };
  }
}
const modelReady = loadModel();

function classColour(classes, label) {
  const index = classes.indexOf(label);
  if (index < 0) return "#495057";
  return index < PALETTE.length ? PALETTE[index] : `hsl(${(index * 137.5) % 360} 70% 45%)`;
}

function showBars(card, top) {
  const list = card.querySelector(".bars");
  list.replaceChildren();
  for (const item of top) {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = "bar-label";
    name.textContent = item.label;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(item.probability * 100).toFixed(1)}%`;
    track.appendChild(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${(item.probability * 100).toFixed(1)}%`;
    li.append(name, track, pct);
    list.appendChild(li);
  }
}

// Boxes are placed in percent of the image's own size (the server answers in its pixels),
// so they stay on their objects at whatever size the image is displayed.
function showBoxes(card, prediction, classes, threshold) {
  const layer = card.querySelector(".boxes");
  const list = card.querySelector(".detections");
  layer.replaceChildren();
  list.replaceChildren();
  const { width, height } = prediction;
  const counts = new Map();
  for (const box of prediction.boxes) {
    const colour = classColour(classes, box.label);
    const score = `${(box.score * 100).toFixed(0)}%`;
    counts.set(box.label, (counts.get(box.label) || 0) + 1);

    const el = document.createElement("div");
    el.className = "box";
    el.dataset.label = box.label;
    el.style.setProperty("--c", colour);
    el.style.left = `${(100 * box.xmin) / width}%`;
    el.style.top = `${(100 * box.ymin) / height}%`;
    el.style.width = `${(100 * (box.xmax - box.xmin)) / width}%`;
    el.style.height = `${(100 * (box.ymax - box.ymin)) / height}%`;
    const tag = document.createElement("span");
    tag.className = box.ymin < 0.06 * height ? "tag inside" : "tag";
    tag.textContent = `${box.label} ${score}`;
    el.appendChild(tag);
    layer.appendChild(el);

    const li = document.createElement("li");
    li.style.setProperty("--c", colour);
    const name = document.createElement("span");
    name.className = "det-label";
    name.textContent = box.label;
    const pct = document.createElement("span");
    pct.className = "det-score";
    pct.textContent = score;
    const where = document.createElement("span");
    where.className = "where";
    where.textContent = `${Math.round(box.xmin)},${Math.round(box.ymin)} – ${Math.round(box.xmax)},${Math.round(box.ymax)}`;
    li.append(name, pct, where);
    li.addEventListener("mouseenter", () => el.classList.add("hot"));
    li.addEventListener("mouseleave", () => el.classList.remove("hot"));
    list.appendChild(li);
  }
  const n = prediction.boxes.length;
  const parts = [...counts].map(([label, count]) => `${label} ${count}`);
  card.querySelector(".summary").textContent = n
    ? `${n} object${n > 1 ? "s" : ""}: ${parts.join(" · ")}`
    : `no objects scoring ${threshold} or more`;
}

async function send(file, query) {
  const form = new FormData();
  form.append("files", file, file.name);
  const response = await fetch(`/v1/predict${query}`, { method: "POST", body: form });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = body.error ? body.error.message : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return body;
}

async function predict(file) {
  const model = await modelReady;
  const detect = model.task === "detect";
  const verb = detect ? "detecting objects in" : "classifying";
  const card = document.getElementById(detect ? "detect-card" : "card").content.firstElementChild.cloneNode(true);
  const img = card.querySelector("img");
  img.src = URL.createObjectURL(file);
  img.alt = file.name;
  card.querySelector(".name").textContent = file.name;
  results.prepend(card);
  pending += 1;
  setStatus(verb);
  try {
    if (detect) {
      const body = await send(file, "");
      showBoxes(card, body.predictions[0], model.classes, body.score_threshold);
    } else {
      const prediction = (await send(file, `?top_k=${TOP_K}`)).predictions[0];
      card.querySelector(".label").textContent = prediction.prediction;
      showBars(card, prediction.top_k);
    }
    card.dataset.state = "done";
  } catch (err) {
    card.querySelector(".error").textContent = err.message;
    card.dataset.state = "error";
  } finally {
    pending -= 1;
    setStatus(verb);
  }
}

function handle(files) {
  for (const file of files) {
    predict(file);
  }
}

input.addEventListener("change", () => {
  handle(input.files);
  input.value = "";
});
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  handle(event.dataTransfer.files);
});
