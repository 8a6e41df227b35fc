// The embedsearch console: a page over the public API, with the user's own key.
// The key lives in `state.key` (and in sessionStorage when the user asks); it is sent only as a bearer header
// to this origin. Everything shown is built with textContent: no server text is ever parsed as HTML.
"use strict";

const STORED_KEY = "embedsearch.console.key";
const state = { key: null, admin: false, collection: null, collectionsCursor: null, documentsCursor: null };
const $ = (selector) => document.querySelector(selector);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node[name] = value;
  }
  for (const child of children) node.append(child === null || child === undefined ? "" : child);
  return node;
}

// -- the API --------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, error) {
    super(error.message);
    this.status = status;
    this.error = error;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                   credentials: "omit", cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, { message: `The server did not answer (${e.message}).`, type: "network_error", code: null });
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON: reported below */ }
  if (!response.ok) {
    const error = data && data.error ? data.error
      : { message: `HTTP ${response.status}: ${text.slice(0, 200)}`, type: "http_error", code: null };
    throw new ApiError(response.status, error);
  }
  return data;
}

const collectionPath = (name) => `/v1/collections/${encodeURIComponent(name)}`;

// -- messages -------------------------------------------------------------------------------------

function showError(e) {
  const box = $("#error");
  box.replaceChildren();
  if (e instanceof ApiError) {
    const detail = [e.status ? `HTTP ${e.status}` : null, e.error.type, e.error.code, e.error.param && `param: ${e.error.param}`]
      .filter(Boolean).join(" · ");
    box.append(el("strong", { textContent: e.message }), " ", el("span", { className: "muted", textContent: detail }));
  } else {
    box.append(el("strong", { textContent: String(e.message || e) }));
  }
  box.hidden = false;
  $("#notice").hidden = true;
}

function notify(message) {
  $("#error").hidden = true;
  const box = $("#notice");
  box.textContent = message;
  box.hidden = false;
}

function clearMessages() {
  $("#error").hidden = true;
  $("#notice").hidden = true;
}

// Runs an action from a button or form: its errors are shown, never thrown away.
function action(fn) {
  return async (event) => {
    if (event) event.preventDefault();
    clearMessages();
    try { await fn(event); } catch (e) { showError(e); }
  };
}

function parseJson(text, what) {
  if (!text.trim()) return undefined;
  try { return JSON.parse(text); } catch (e) { throw new Error(`The ${what} is not valid JSON: ${e.message}`); }
}

// -- signing in -----------------------------------------------------------------------------------

async function connect(key, remember) {
  state.key = key;
  try {
    const page = await api("GET", "/v1/collections?limit=100");
    state.admin = await api("GET", "/v1/keys").then(() => true, (e) => {
      if (e.status === 403) return false;
      throw e;
    });
    if (remember) sessionStorage.setItem(STORED_KEY, key);
    $("#signin").hidden = true;
    $("#intro").hidden = true;
    $("#whoami").hidden = false;
    $("#tabs").hidden = false;
    $("#tenant").textContent = `${state.admin ? "admin key" : "key"} ${key.slice(0, 7)}…`;
    $("#keys-tab").hidden = !state.admin;
    await loadModels();
    renderCollections(page, false);
    showView("collections");
  } catch (e) {
    state.key = null;
    sessionStorage.removeItem(STORED_KEY);
    throw e;
  }
}

function signOut() {
  state.key = null;
  state.admin = false;
  state.collection = null;
  sessionStorage.removeItem(STORED_KEY);
  $("#key").value = "";
  for (const id of ["#whoami", "#tabs", "#collections-view", "#keys-view", "#collection"]) $(id).hidden = true;
  $("#signin").hidden = false;
  $("#intro").hidden = false;
  clearMessages();
}

function showView(view) {
  $("#collections-view").hidden = view !== "collections";
  $("#keys-view").hidden = view !== "keys";
  for (const button of document.querySelectorAll("#tabs button")) button.classList.toggle("active", button.dataset.view === view);
  if (view === "keys") return loadKeys();
}

// -- collections ----------------------------------------------------------------------------------

async function loadModels() {
  const models = await api("GET", "/v1/models");
  const select = $("#models");
  select.replaceChildren(el("option", { value: "", textContent: "(none: vectors only)" }),
    ...models.data.map((m) => el("option", { value: m.id, textContent: m.id })));
  if (models.data.length) select.value = models.data[0].id;
}

async function loadCollections(more = false) {
  const cursor = more && state.collectionsCursor ? `&cursor=${encodeURIComponent(state.collectionsCursor)}` : "";
  renderCollections(await api("GET", `/v1/collections?limit=100${cursor}`), more);
}

function renderCollections(page, append) {
  const list = $("#collections");
  if (!append) list.replaceChildren();
  for (const c of page.data) {
    list.append(el("li", {},
      el("button", { type: "button", className: c.name === state.collection ? "link active" : "link",
                     dataset: { name: c.name }, onclick: action(() => openCollection(c.name)) }, c.name),
      el("span", { className: "muted", textContent: ` ${c.count} docs` })));
  }
  if (!list.children.length) list.append(el("li", { className: "muted", textContent: "No collections yet." }));
  state.collectionsCursor = page.next_cursor;
  $("#more-collections").hidden = !page.has_more;
}

async function createCollection(event) {
  const form = new FormData(event.target);
  const body = { name: form.get("name").trim(), metric: form.get("metric"), index: form.get("index").trim() || "Flat" };
  if (form.get("model")) body.model = form.get("model");
  if (form.get("dimension")) body.dimension = Number(form.get("dimension"));
  const created = await api("POST", "/v1/collections", body);
  event.target.reset();
  $("#create").open = false;
  await loadCollections();
  await openCollection(created.name);
  notify(`Created ${created.name}.`);
}

async function openCollection(name) {
  const c = await api("GET", collectionPath(name));
  state.collection = c.name;
  $("#collection").hidden = false;
  $("#collection-name").textContent = c.name;
  $("#collection-info").textContent = [c.model ? `model ${c.model}` : "vectors only", `${c.dimension} dimensions`,
    c.metric, `index ${c.index}`, `${c.count} documents (${c.indexed} indexed)`, c.status].join(" · ");
  for (const button of document.querySelectorAll("#collections button")) button.classList.toggle("active", button.dataset.name === name);
  $("#hits").replaceChildren();
  $("#documents tbody").replaceChildren();
  $("#more-documents").hidden = true;
  showPane("search");
}

function showPane(pane) {
  for (const name of ["search", "documents", "upsert"]) $(`#pane-${name}`).hidden = name !== pane;
  for (const button of document.querySelectorAll("#collection-tabs button[data-pane]"))
    button.classList.toggle("active", button.dataset.pane === pane);
  if (pane === "documents") return loadDocuments(false);
}

async function deleteCollection() {
  const name = state.collection;
  if (!confirm(`Delete the collection ${name} with all its documents?`)) return;
  await api("DELETE", collectionPath(name));
  state.collection = null;
  $("#collection").hidden = true;
  await loadCollections();
  notify(`Deleted ${name}.`);
}

// -- documents ------------------------------------------------------------------------------------

async function loadDocuments(more) {
  const params = new URLSearchParams({ limit: "50" });
  const filter = $("#browse-filter").value.trim();
  if (filter) {
    parseJson(filter, "filter");
    params.set("filter", filter);
  }
  if (more && state.documentsCursor) params.set("cursor", state.documentsCursor);
  const page = await api("GET", `${collectionPath(state.collection)}/documents?${params}`);
  const body = $("#documents tbody");
  if (!more) body.replaceChildren();
  for (const d of page.data) {
    body.append(el("tr", {},
      el("td", { className: "id", textContent: d.id }),
      el("td", { textContent: d.text ?? "" }),
      el("td", {}, el("code", { textContent: JSON.stringify(d.metadata ?? {}) })),
      el("td", {}, el("button", { type: "button", className: "danger small", textContent: "Delete",
                                  onclick: action(() => deleteDocument(d.id)) }))));
  }
  if (!body.children.length) body.append(el("tr", {}, el("td", { colSpan: 4, className: "muted", textContent: "No documents." })));
  state.documentsCursor = page.next_cursor;
  $("#more-documents").hidden = !page.has_more;
}

async function deleteDocument(id) {
  await api("DELETE", `${collectionPath(state.collection)}/documents/${encodeURIComponent(id)}`);
  await loadDocuments(false);
  notify(`Deleted document ${id}.`);
}

function parseDocuments(text) {
  const trimmed = text.trim();
  if (trimmed.startsWith("[")) return parseJson(trimmed, "document list");
  return trimmed.split("\n").filter((line) => line.trim()).map((line, i) => parseJson(line, `document on line ${i + 1}`));
}

async function upsert() {
  const documents = parseDocuments($("#upsert-documents").value);
  if (!Array.isArray(documents) || !documents.length) throw new Error("Give at least one document.");
  const answer = await api("POST", `${collectionPath(state.collection)}/documents`, { documents });
  $("#upsert-documents").value = "";
  await openCollection(state.collection);
  notify(`Upserted ${answer.upserted} document${answer.upserted === 1 ? "" : "s"} (${answer.usage.total_tokens} tokens).`);
}

// -- search ---------------------------------------------------------------------------------------

async function search() {
  const body = { query: $("#query").value, mode: $("#mode").value, top_k: Number($("#top-k").value || 10),
                 explain: $("#explain").checked, include: ["text", "metadata"] };
  const filter = parseJson($("#search-filter").value, "filter");
  if (filter !== undefined) body.filter = filter;
  const answer = await api("POST", `${collectionPath(state.collection)}/search`, body);
  const hits = $("#hits");
  // The branches that ran: a hybrid hit's explain says how each one ranked it.
  const branches = body.mode === "hybrid" ? ["dense", "keyword"] : [body.mode];
  hits.replaceChildren(...answer.data.map((hit) => renderHit(hit, branches)));
  if (!answer.data.length) hits.append(el("li", { className: "muted", textContent: "No hits." }));
}

function renderHit(hit, branches) {
  const item = el("li", { className: "hit" },
    el("div", {}, el("span", { className: "id", textContent: hit.id }), " ",
       el("span", { className: "score", textContent: hit.score.toFixed(4) })),
    el("div", { className: "text", textContent: hit.text ?? "" }));
  if (hit.metadata && Object.keys(hit.metadata).length)
    item.append(el("code", { className: "metadata", textContent: JSON.stringify(hit.metadata) }));
  if (hit.explain) {
    const branch = (name) => {
      const b = hit.explain[name];
      return b ? `${name}: rank ${b.rank}, score ${b.score.toFixed(4)}` : `${name}: not found`;
    };
    item.append(el("div", { className: "explain", textContent: branches.map(branch).join(" · ") }));
  }
  return item;
}

// -- keys (admin) ---------------------------------------------------------------------------------

async function loadKeys() {
  const keys = await api("GET", "/v1/keys");
  $("#keys tbody").replaceChildren(...keys.data.map((k) => el("tr", {},
    el("td", { textContent: String(k.id) }), el("td", { textContent: k.tenant }),
    el("td", {}, el("code", { textContent: `${k.prefix}…` })), el("td", { textContent: k.admin ? "yes" : "" }),
    el("td", { textContent: new Date(k.created_at * 1000).toLocaleString() }),
    el("td", {}, el("button", { type: "button", className: "danger small", textContent: "Revoke",
                                onclick: action(() => revokeKey(k)) })))));
}

async function issueKey() {
  const created = await api("POST", "/v1/keys", { tenant: $("#new-tenant").value.trim() });
  $("#new-tenant").value = "";
  $("#new-key-value").textContent = created.key;
  $("#new-key").hidden = false;
  await loadKeys();
}

async function revokeKey(k) {
  if (!confirm(`Revoke key ${k.id} (${k.tenant}, ${k.prefix}…)?`)) return;
  await api("DELETE", `/v1/keys/${k.id}`);
  $("#new-key").hidden = true;
  await loadKeys();
  notify(`Revoked key ${k.id}.`);
}

// -- wiring ---------------------------------------------------------------------------------------

$("#signin").addEventListener("submit", action(() => connect($("#key").value.trim(), $("#remember").checked)));
$("#signout").addEventListener("click", signOut);
for (const button of document.querySelectorAll("#tabs button")) button.addEventListener("click", action(() => showView(button.dataset.view)));
$("#more-collections").addEventListener("click", action(() => loadCollections(true)));
$("#create-form").addEventListener("submit", action(createCollection));
for (const button of document.querySelectorAll("#collection-tabs button[data-pane]"))
  button.addEventListener("click", action(() => showPane(button.dataset.pane)));
$("#delete-collection").addEventListener("click", action(deleteCollection));
$("#browse-form").addEventListener("submit", action(() => loadDocuments(false)));
$("#more-documents").addEventListener("click", action(() => loadDocuments(true)));
$("#upsert-form").addEventListener("submit", action(upsert));
$("#search-form").addEventListener("submit", action(search));
$("#key-form").addEventListener("submit", action(issueKey));

const stored = sessionStorage.getItem(STORED_KEY);
if (stored) {
  $("#remember").checked = true;
  action(() => connect(stored, true))();
}
