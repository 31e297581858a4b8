// The 'By photo' page. Plain JavaScript, no framework, no build step: everything it needs comes from the
// example application (examples/search_service.py), which asks PostgreSQL; pg_clip embeds inside it.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  photo: $("photo"), camera: $("camera"), words: $("words"), form: $("text-form"), note: $("model-note"),
  error: $("error"), section: $("results-section"), query: $("query"), queryPhoto: $("query-photo"),
  queryText: $("query-text"), status: $("status"), results: $("results"), more: $("more"), maxMb: $("max-mb"),
  wordsHint: $("words-hint"),
};

const settings = { maxUploadBytes: 20 * 1024 * 1024, pageSize: 24, maxResults: 1000 };
// The search on screen: what to send again for the next page.
let current = null;        // {kind: "image"|"text"|"like", file?, q?, imageId?, productId?}
let nextOffset = 0;
let inFlight = null;        // AbortController of the request under way
let previewUrl = null;

const UNREACHABLE = "The search service cannot be reached. Check your connection and try again.";

function mb(bytes) {
  return Math.round((bytes / (1024 * 1024)) * 10) / 10;
}

// --- talking to the application --------------------------------------------------------------------------

async function api(url, options = {}) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    return { ok: false, body: { error: UNREACHABLE } };
  }
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = { error: "The search service answered something unexpected. Try again." };
  }
  return { ok: response.ok, status: response.status, body };
}

async function loadInfo() {
  const { ok, body } = await api("/api/info");
  if (body && body.max_upload_bytes) {
    settings.maxUploadBytes = body.max_upload_bytes;
    settings.pageSize = body.page_size;
    settings.maxResults = body.max_results;
    els.maxMb.textContent = String(mb(settings.maxUploadBytes));
  }
  if (!ok) {
    showError(body.error, body.sqlstate);
    return;
  }
  // Which languages the words box takes depends on the text encoder the application chose (--text-model).
  if (body.text_model === "multilingual") {
    els.wordsHint.textContent = "(English, Russian or 50+ other languages)";
    els.words.placeholder = "e.g. red backpack, красный рюкзак";
  } else {
    els.wordsHint.textContent = "(in English)";
  }
  if (body.random_weights || body.text_random_weights) {
    els.note.textContent = "Note: this catalogue's model (" + body.model_version + ") has random weights. " +
      "A photo from the catalogue still finds itself first (distance 0), but the other matches are arbitrary.";
    els.note.hidden = false;
  }
}

// --- messages --------------------------------------------------------------------------------------------

function showError(message, sqlstate) {
  els.error.textContent = message || "Something went wrong. Try again.";
  if (sqlstate) {
    const code = document.createElement("span");
    code.className = "code";
    code.textContent = "Error code " + sqlstate;
    els.error.appendChild(code);
  }
  els.error.hidden = false;
}

function clearError() {
  els.error.hidden = true;
  els.error.textContent = "";
}

function describe(search) {
  if (search.kind === "image") return "your photo" + (search.file.name ? " (" + search.file.name + ")" : "");
  if (search.kind === "text") return "\u201c" + search.q + "\u201d";
  return "product " + search.productId;
}

function showQuery(search) {
  els.query.hidden = false;
  if (search.kind === "image") {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(search.bytes);
    els.queryPhoto.src = previewUrl;
    els.queryPhoto.alt = "Your photo";
    els.queryPhoto.hidden = false;
  } else if (search.kind === "like") {
    els.queryPhoto.src = "/photo/" + encodeURIComponent(search.imageId);
    els.queryPhoto.alt = "Photo of product " + search.productId;
    els.queryPhoto.hidden = false;
  } else {
    els.queryPhoto.hidden = true;
    els.queryPhoto.removeAttribute("src");
  }
  els.queryText.textContent = search.kind === "image" ? "Your photo" + (search.file.name ? " (" + search.file.name + ")" : "")
    : search.kind === "text" ? "Words: " + describe(search) : "More like " + describe(search);
}

// --- searching -------------------------------------------------------------------------------------------

function request(search, offset) {
  const paging = "offset=" + offset + "&limit=" + settings.pageSize;
  if (search.kind === "image") {
    return ["/api/search-by-image?" + paging, {
      method: "POST", body: search.bytes, headers: { "Content-Type": "application/octet-stream" } }];
  }
  if (search.kind === "text") {
    return ["/api/search-by-text?q=" + encodeURIComponent(search.q) + "&" + paging, {}];
  }
  return ["/api/more-like-this?image_id=" + encodeURIComponent(search.imageId) + "&" + paging, {}];
}

async function run(search, offset = 0) {
  if (inFlight) inFlight.abort();
  const controller = new AbortController();
  inFlight = controller;
  clearError();
  if (offset === 0) {
    current = search;
    showQuery(search);
    els.more.hidden = true;
  }
  els.section.setAttribute("aria-busy", "true");
  els.status.textContent = offset === 0 ? "Searching\u2026" : "Loading more\u2026";
  els.more.disabled = true;
  const [url, options] = request(search, offset);
  let answer;
  try {
    answer = await api(url, { ...options, signal: controller.signal });
  } catch (e) {
    return; // a newer search replaced this one
  } finally {
    if (inFlight === controller) {
      inFlight = null;
      els.section.setAttribute("aria-busy", "false");
      els.more.disabled = false;
    }
  }
  if (controller.signal.aborted) return;
  const { ok, body } = answer;
  // A "More like this" pressed from the keyboard is about to disappear with the old results: the keyboard
  // goes on from the results' heading, so that the next Tab reaches the new results.
  const focusWasInResults = offset === 0 && els.results.contains(document.activeElement);
  if (!ok) {
    if (offset === 0) {
      els.results.replaceChildren();
      els.status.textContent = "No results.";
    } else {
      els.status.textContent = "Could not load more results.";
    }
    showError(body.error, body.sqlstate);
  } else {
    render(body, offset);
  }
  if (focusWasInResults) $("results-heading").focus();
  // Searches answered so far, for anyone waiting on the page (the browser test does).
  document.documentElement.dataset.searches = String(Number(document.documentElement.dataset.searches || 0) + 1);
}

function render(body, offset) {
  if (offset === 0) els.results.replaceChildren();
  const first = body.results.length ? els.results.children.length : -1;
  body.results.forEach((r, i) => els.results.appendChild(card(r, offset + i + 1)));
  const shown = els.results.children.length;
  const ms = body.ms < 10 ? body.ms.toFixed(1) : Math.round(body.ms);
  if (shown === 0) {
    els.status.textContent = "No products to compare with yet (" + ms + " ms in the database).";
  } else {
    els.status.textContent = "Best matches for " + describe(current) + ": " + shown +
      (body.more ? " shown" : (shown === 1 ? " product" : " products")) +
      " \u00b7 " + (offset ? "this page took " : "search took ") + ms + " ms in the database";
  }
  nextOffset = offset + body.results.length;
  els.more.hidden = !body.more || nextOffset >= settings.maxResults;
  // After "Show more", the keyboard goes on from the first new result instead of starting over.
  if (offset > 0 && first >= 0) {
    const button = els.results.children[first].querySelector("button");
    if (button) button.focus();
  }
}

function card(result, rank) {
  const li = document.createElement("li");
  li.className = "card";
  li.dataset.imageId = result.image_id;
  li.dataset.productId = result.product_id;
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  img.className = "photo";
  img.src = "/photo/" + encodeURIComponent(result.image_id);
  img.alt = "Photo of product " + result.product_id;
  img.loading = "lazy";
  img.decoding = "async";
  img.width = 240;
  img.height = 240;
  img.addEventListener("error", () => {
    // No photo (a missing or unsupported file at the image host): say so in its place.
    const missing = document.createElement("div");
    missing.className = "photo broken";
    missing.setAttribute("role", "img");
    missing.setAttribute("aria-label", "No photo of product " + result.product_id);
    missing.textContent = "No photo";
    img.replaceWith(missing);
  }, { once: true });
  const caption = document.createElement("figcaption");
  const product = document.createElement("span");
  product.className = "product";
  product.textContent = "Product " + result.product_id;
  const rankEl = document.createElement("span");
  rankEl.className = "rank";
  rankEl.textContent = "#" + rank;
  const distance = document.createElement("span");
  distance.className = "distance";
  distance.textContent = "distance " + result.distance.toFixed(4);
  const line = document.createElement("div");
  line.append(distance, rankEl);
  caption.append(product, line);
  figure.append(img, caption);
  const like = document.createElement("button");
  like.type = "button";
  like.className = "button like";
  like.textContent = "More like this";
  like.setAttribute("aria-label", "More like product " + result.product_id);
  like.addEventListener("click", () => searchLike(result.image_id, result.product_id));
  li.append(figure, like);
  return li;
}

// --- the ways in -----------------------------------------------------------------------------------------

// A file refused here, before any upload: the results make way for the reason, as for a refusal by the server.
function refuse(file, message) {
  if (inFlight) inFlight.abort();
  current = null;
  els.query.hidden = false;
  els.queryPhoto.hidden = true;
  els.queryText.textContent = "Your photo" + (file.name ? " (" + file.name + ")" : "");
  els.results.replaceChildren();
  els.more.hidden = true;
  els.status.textContent = "No results.";
  showError(message);
}

function searchFile(file) {
  if (!file) return;
  clearError();
  if (file.size === 0) return refuse(file, "The file is empty. Choose a photo.");
  if (file.size > settings.maxUploadBytes) {
    // The application refuses it too, before the database; this saves the upload.
    return refuse(file, "The photo is larger than " + mb(settings.maxUploadBytes) + " MB. Try a smaller one.");
  }
  // Read the bytes now: "Show more" sends them again, and by then the file may be gone (a phone's camera
  // capture is a temporary file) or changed.
  file.arrayBuffer().then((bytes) => {
    history.replaceState(null, "", location.pathname);
    run({ kind: "image", file, bytes: new Blob([bytes], { type: file.type }) });
  }, () => refuse(file, "This file could not be read. Choose it again."));
}

function searchWords(q, push = true) {
  q = q.trim();
  if (!q) {
    showError("Type a few words to search for.");
    els.words.focus();
    return;
  }
  if (push) history.pushState(null, "", "?q=" + encodeURIComponent(q));
  run({ kind: "text", q });
}

function searchLike(imageId, productId, push = true) {
  if (push) history.pushState(null, "", "?like=" + encodeURIComponent(imageId) + "&product=" + encodeURIComponent(productId));
  run({ kind: "like", imageId, productId });
}

function fromAddress() {
  const params = new URLSearchParams(location.search);
  if (params.get("q")) {
    els.words.value = params.get("q");
    searchWords(params.get("q"), false);
  } else if (params.get("like")) {
    searchLike(params.get("like"), params.get("product") || params.get("like"), false);
  }
}

// A preview the browser cannot show (not an image, a TIFF) is left out rather than shown broken.
els.queryPhoto.addEventListener("error", () => { els.queryPhoto.hidden = true; });

for (const input of [els.photo, els.camera]) {
  input.addEventListener("change", () => {
    searchFile(input.files[0]);
    input.value = ""; // choosing the same file again searches again
  });
}

els.form.addEventListener("submit", (event) => {
  event.preventDefault();
  searchWords(els.words.value);
});

els.more.addEventListener("click", () => {
  if (current) run(current, nextOffset);
});

// Drag and drop: anywhere on the page.
let dragDepth = 0;
document.addEventListener("dragenter", (event) => {
  if (!event.dataTransfer || !Array.from(event.dataTransfer.types).includes("Files")) return;
  dragDepth++;
  document.body.classList.add("dragging");
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) document.body.classList.remove("dragging");
});
document.addEventListener("dragover", (event) => event.preventDefault());
document.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  document.body.classList.remove("dragging");
  const files = event.dataTransfer ? event.dataTransfer.files : [];
  if (files.length) {
    searchFile(files[0]);
  } else {
    showError("Drop a photo file. A picture dragged from another web page has to be saved first.");
  }
});

// Paste: a copied photo (a screenshot, an image copied in another program) searches at once; text pasted
// into the words box stays text.
document.addEventListener("paste", (event) => {
  const items = event.clipboardData ? Array.from(event.clipboardData.items) : [];
  const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
  if (item) {
    event.preventDefault();
    searchFile(item.getAsFile());
  }
});

window.addEventListener("popstate", fromAddress);

// The limits first (page size, upload size), then whatever search the address names.
loadInfo().then(() => {
  document.documentElement.dataset.ready = "true";
  fromAddress();
});
