// sparkvision web page: each chosen or dropped image goes to POST /v1/predict on its own
// (the server batches concurrent requests), and its top-5 classes are drawn as bars.
"use strict";

const TOP_K = 5;
const drop = document.getElementById("drop");
const input = document.getElementById("files");
const results = document.getElementById("results");
const statusLine = document.getElementById("status");
const template = document.getElementById("card");
let pending = 0;

function setStatus() {
  statusLine.textContent = pending ? `classifying ${pending} image${pending > 1 ? "s" : ""}…` : "";
}

async function loadModel() {
  const el = document.getElementById("model");
  try {
    const response = await fetch("/v1/models");
    const body = await response.json();
    const model = body.models[0];
    el.textContent = `${model.name} · ${model.num_classes} classes · input ${model.input_size.join("×")} · version ${model.version}`;
  } catch (err) {
    el.textContent = "model information unavailable";
  }
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

async function classify(file) {
  const card = template.content.firstElementChild.cloneNode(true);
  const img = card.querySelector("img");
  img.src = URL.createObjectURL(file);
  img.alt = file.name;
  card.querySelector(".name").textContent = file.name;
  results.prepend(card);
  pending += 1;
  setStatus();
  try {
    const form = new FormData();
    form.append("files", file, file.name);
    const response = await fetch(`/v1/predict?top_k=${TOP_K}`, { method: "POST", body: form });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const message = body.error ? body.error.message : `HTTP ${response.status}`;
      throw new Error(message);
    }
    const prediction = body.predictions[0];
    card.querySelector(".label").textContent = prediction.prediction;
    showBars(card, prediction.top_k);
    card.dataset.state = "done";
  } catch (err) {
    card.querySelector(".error").textContent = err.message;
    card.dataset.state = "error";
  } finally {
    pending -= 1;
    setStatus();
  }
}

function handle(files) {
  for (const file of files) {
    classify(file);
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
loadModel();
