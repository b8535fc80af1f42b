// The page calls the same JSON API as any client: /search, /stats, /thumbnails,
// /matches. No framework, nothing loaded from the internet.
"use strict";

const $ = (id) => document.getElementById(id);
let lastFile = null;
// the service's own verification threshold (from /stats), not a number of ours
let minInliers = null;

async function loadStats() {
  try {
    const stats = await (await fetch("/stats")).json();
    minInliers = stats.min_inliers;
    const model = stats.words === null ? `${stats.dim}-d descriptors, ${stats.search}`
      : `${stats.words.toLocaleString()} words`;
    $("stats").textContent = `${stats.images.toLocaleString()} images · ` +
      `${stats.features} · ${model}`;
    if (!stats.verified) {  // a global index served without --verify-with
      $("rerank").checked = false;
      $("rerank").disabled = true;
      $("rerank").parentElement.title = "this index has no local features to verify with";
      $("mirror").checked = false;
      $("mirror").disabled = true;
    }
  } catch (error) {
    $("stats").textContent = "";
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function card(result) {
  const item = document.createElement("li");
  item.className = "card";
  item.dataset.name = result.name;
  item.dataset.id = result.id;
  const verified = result.inliers !== null && minInliers !== null &&
    result.inliers >= minInliers;
  // the service's decision where it makes one (bag-of-words indexes)
  const decided = { copy: "copy", object: "same object" }[result.decision];
  // which view of the query matched: its mirror image, a thumbnail at twice its size
  const views = [result.mirrored ? "mirror" : "", result.finer ? "at 2x" : ""]
    .filter(Boolean);
  const mirror = views.length ? ` (${views.join(", ")})` : "";
  let badge = "";
  if (decided) {
    badge = `<span class="badge decided ${result.decision}" title="log10 NFA ` +
      `${result.log_nfa}, coverage ${result.coverage}">${decided}${mirror} · ` +
      `${result.inliers}</span>`;
  } else if (result.decision === "unverified" && result.inliers === null &&
             $("rerank").checked) {
    badge = `<span class="badge">not verified</span>`;
  } else if (result.inliers !== null) {
    badge = `<span class="badge ${verified && !result.decision ? "verified" : ""}">` +
      `${result.inliers} inliers</span>`;
  }
  item.innerHTML = `<div class="thumb"><span class="rank">${result.rank}</span>${badge}` +
    `<img loading="lazy" alt=""></div><div class="meta"><div class="name"></div>` +
    `<div class="score">score ${result.score.toFixed(3)}</div></div>`;
  item.querySelector("img").src = result.thumbnail_url;
  // the end of a long path says most: its folder and file
  item.querySelector(".name").textContent = result.name.split("/").slice(-2).join("/");
  item.querySelector(".name").title = result.name;
  item.addEventListener("click", () => openMatch(result));
  return item;
}

function openMatch(result) {
  $("viewer-title").textContent = `#${result.rank} ${result.name}`;
  $("viewer-image").src = result.match_url || result.image_url;
  $("viewer-link").href = result.image_url;
  $("viewer").showModal();
}

async function search(file) {
  lastFile = file;
  showError("");
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("drop-text").hidden = true;
  $("timing").textContent = "searching…";
  const form = new FormData();
  form.append("image", file);
  form.append("k", $("k").value);
  form.append("rerank", $("rerank").checked ? "50" : "0");
  form.append("mirror", $("mirror").checked ? "true" : "false");
  let answer;
  try {
    const response = await fetch("/search", { method: "POST", body: form });
    answer = await response.json();
    if (!response.ok) throw new Error(answer.detail || response.statusText);
  } catch (error) {
    $("timing").textContent = "";
    showError(String(error.message || error));
    return;
  }
  minInliers = answer.min_inliers;  // what this search verified with
  const t = answer.timings;
  const total = t.decode_ms + t.features_ms + t.search_ms;
  $("timing").textContent = `${answer.results.length} results in ${total.toFixed(0)} ms ` +
    `(features ${t.features_ms.toFixed(0)} ms, search ${t.search_ms.toFixed(0)} ms` +
    (answer.keypoints === null ? ")" : `, ${answer.keypoints} keypoints)`);
  $("results").replaceChildren(...answer.results.map(card));
  $("empty").hidden = answer.results.length > 0;
  $("results").dataset.query = answer.query;
}

$("file").addEventListener("change", (event) => {
  if (event.target.files.length) search(event.target.files[0]);
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) search(event.dataTransfer.files[0]);
});
for (const id of ["k", "rerank", "mirror"]) {
  $(id).addEventListener("change", () => { if (lastFile) search(lastFile); });
}
loadStats();
