// navml viewer: Leaflet maps of the store served by `navml serve` (every request goes to this server).
"use strict";

const STATUS_COLORS = { "new": "#00e5ff", "in OSM": "#8bc34a", "on road": "#ff9800" };
const SPLIT_COLORS = { train: "#2196f3", val: "#ffc107", test: "#f44336", buffer: "#9e9e9e" };
const LABELLED = ["markings", "boxes", "detections"];  // drawn with their class as a tooltip
const state = { cities: {}, city: null, info: null, threshold: 0.35, model: "", model2: "", selected: null, lastMs: null };
const $ = (id) => document.getElementById(id);

function tileOpts(info) {
  const b = info.bounds;
  return {
    minNativeZoom: info.zoom, maxNativeZoom: info.zoom, minZoom: info.zoom - 3, maxZoom: info.zoom + 3,
    tileSize: info.tile_size, bounds: b ? L.latLngBounds([b[1], b[0]], [b[3], b[2]]) : undefined,
    errorTileUrl: "data:image/gif;base64,R0lGODlhAQABAAAAACH5BAEKAAEALAAAAAABAAEAAAICTAEAOw==",
  };
}

// A tile layer fetched with fetch() so that the X-Predict-Ms header of live tiles can be read.
const LiveLayer = L.GridLayer.extend({
  createTile: function (coords, done) {
    const img = document.createElement("img");
    img.alt = "";
    const url = this.options.urlFor(coords);
    fetch(url).then((r) => {
      if (!r.ok) throw new Error(r.status);
      const ms = r.headers.get("X-Predict-Ms");
      if (ms !== null && r.headers.get("X-Cache") !== "hit") { state.lastMs = parseFloat(ms); $("ms").textContent = `live: ${ms} ms`; }
      return r.blob();
    }).then((blob) => { img.onload = () => done(null, img); img.src = URL.createObjectURL(blob); })
      .catch((e) => done(e, img));
    return img;
  },
});

// Live detections: one JSON request per visible tile; boxes are clickable for review (kind detection).
const LiveDetections = L.GridLayer.extend({
  initialize: function (options) {
    L.GridLayer.prototype.initialize.call(this, options);
    this.boxes = L.geoJSON(null, {
      style: { color: "#e040fb", weight: 1.5, fillOpacity: 0.1 },
      onEachFeature: (f, l) => {
        l.bindTooltip(`${f.properties.class} ${f.properties.score}`, { className: "mark-label" });
        l.on("click", (e) => { L.DomEvent.stopPropagation(e); select("detections", f); });
      },
    });
  },
  onAdd: function (map) { L.GridLayer.prototype.onAdd.call(this, map); this.boxes.addTo(map); },
  onRemove: function (map) { this.boxes.remove(); this.boxes.clearLayers(); L.GridLayer.prototype.onRemove.call(this, map); },
  createTile: function (coords, done) {
    const div = document.createElement("div");
    fetch(this.options.urlFor(coords)).then((r) => {
      if (!r.ok) throw new Error(r.status);
      const ms = r.headers.get("X-Predict-Ms");
      if (ms !== null && r.headers.get("X-Cache") !== "hit") $("ms").textContent = `live det: ${ms} ms`;
      return r.json();
    }).then((fc) => { this.boxes.addData(fc); done(null, div); }).catch((e) => done(e, div));
    return div;
  },
});

function rasterLayers(info, map, model) {
  const c = encodeURIComponent(info.name);
  const o = tileOpts(info);
  const out = {};
  if (info.layers.includes("imagery")) out.imagery = L.tileLayer(`/tiles/${c}/imagery/{z}/{x}/{y}.png`, o);
  if (info.layers.includes("masks")) out.masks = L.tileLayer(`/tiles/${c}/masks/{z}/{x}/{y}.png`, { ...o, opacity: 0.7 });
  if (info.layers.includes("probs")) out.probabilities = L.tileLayer(`/tiles/${c}/probs/{z}/{x}/{y}.png?threshold={t}`, { ...o, t: () => state.threshold });
  if (model) {
    out[`live ${model}`] = new LiveLayer({ ...o, urlFor: (p) => `/predict/${c}/${encodeURIComponent(model)}/${p.z}/${p.x}/${p.y}.png?threshold=${state.threshold}` });
  }
  const det = info.models.find((m) => m.task === "detection");
  if (det) {
    out[`live ${det.name} (detections)`] = new LiveDetections({ ...o, urlFor: (p) => `/predict/${c}/${encodeURIComponent(det.name)}/${p.z}/${p.x}/${p.y}.json` });
  }
  return out;
}

function featureColor(name, f) {
  if (name === "predictions" || name === "polygons") return STATUS_COLORS[f.properties.status] || "#fff";
  if (name === "negatives") return f.properties.keep === false ? "#9e9e9e" : "#ff1744";
  if (name === "splits") return SPLIT_COLORS[f.properties.split] || "#fff";
  if (name === "boxes") return "#ffffff";
  if (name === "detections") return "#e040fb";
  if (name === "reviews") return "#76ff03";
  if (name === "osm") return "#ffeb3b";
  if (name === "aoi") return "#ffffff";
  if (name === "markings") return "#e040fb";
  return "#fff";
}

function vectorLayer(info, name) {
  const layer = L.geoJSON(null, {
    style: (f) => ({ color: featureColor(name, f), weight: name === "aoi" ? 2 : name === "splits" ? 0.5 : 1.5, fill: name !== "aoi",
                     fillOpacity: name === "splits" ? 0.25 : 0.15 }),
    onEachFeature: (f, l) => {
      if (LABELLED.includes(name) && f.properties.class) {
        const text = f.properties.score !== undefined ? `${f.properties.class} ${f.properties.score}` : f.properties.class;
        l.bindTooltip(text, { permanent: false, className: "mark-label" });
      }
      l.on("click", (e) => { L.DomEvent.stopPropagation(e); select(name, f); });
    },
  });
  layer.navmlName = name;
  layer.load = () => fetch(`/api/vector/${encodeURIComponent(info.name)}/${encodeURIComponent(name)}`)
    .then((r) => r.json()).then((fc) => { layer.clearLayers(); layer.addData(fc); return layer; });
  return layer;
}

let maps = [], control = null, vectors = {}, rasters = {};

function buildMap(id, model, withControl) {
  const info = state.info;
  const map = L.map(id, { attributionControl: false, zoomSnap: 1 });
  const r = rasterLayers(info, map, model);
  const first = r.imagery || Object.values(r)[0];
  if (first) first.addTo(map);
  const b = info.bounds;
  if (b) map.fitBounds([[b[1], b[0]], [b[3], b[2]]]); else map.setView([0, 0], info.zoom);
  map.setZoom(Math.max(map.getZoom(), info.zoom - 2));
  if (withControl) {
    rasters = r;
    vectors = {};
    for (const name of info.vectors) vectors[name] = vectorLayer(info, name);
    const overlays = {};
    for (const [k, v] of Object.entries(r)) if (v !== first) overlays[k] = v;
    for (const [k, v] of Object.entries(vectors)) overlays[k] = v;
    control = L.control.layers(first ? { imagery: first } : {}, overlays, { collapsed: false }).addTo(map);
    map.on("overlayadd", (e) => { if (e.layer.load) e.layer.load(); });
    for (const name of ["predictions", "aoi"]) if (vectors[name]) vectors[name].addTo(map).load();
    map.on("click", (e) => tileInfo(e.latlng));
  } else {
    for (const [k, v] of Object.entries(r)) if (k.startsWith("live") && !k.endsWith("(detections)")) v.addTo(map);
  }
  return map;
}

function sync(a, b) {
  let busy = false;
  const follow = (src, dst) => src.on("move", () => { if (busy) return; busy = true; dst.setView(src.getCenter(), src.getZoom(), { animate: false }); busy = false; });
  follow(a, b); follow(b, a);
}

function rebuild() {
  for (const m of maps) m.remove();
  maps = [];
  const second = state.model2 !== "";
  $("map2").hidden = !second;
  maps.push(buildMap("map", state.model, true));
  if (second) { maps.push(buildMap("map2", state.model2, false)); sync(maps[0], maps[1]); }
  window.navml.map = maps[0];
}

function tileCoords(latlng, z) {
  const n = 2 ** z, lat = latlng.lat * Math.PI / 180;
  const x = Math.floor((latlng.lng + 180) / 360 * n);
  const y = Math.floor((1 - Math.log(Math.tan(lat) + 1 / Math.cos(lat)) / Math.PI) / 2 * n);
  return { z, x, y };
}

function esc(v) { return String(v).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`); }

function table(obj) {
  return "<table>" + Object.entries(obj).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(typeof v === "object" && v !== null ? JSON.stringify(v) : v)}</td></tr>`).join("") + "</table>";
}

function tileInfo(latlng) {
  const t = tileCoords(latlng, state.info.zoom);
  return fetch(`/api/tile/${encodeURIComponent(state.city)}/${t.z}/${t.x}/${t.y}`).then((r) => r.json())
    .then((j) => { $("info").innerHTML = "<h4>tile</h4>" + table(j); return j; });
}

function select(name, f) {
  state.selected = { name, feature: f };
  const kind = f.properties.kind || (LABELLED.includes(name) ? "detection" : "segmentation");
  const cls = f.properties.class || (state.info.classes[0] || "");
  const reviewable = ["predictions", "polygons", "markings", "detections", "negatives", "reviews"].includes(name);
  // on a negative, "correct" vetoes it (mined: keep false; reviewed: removed) and "mark false" keeps it
  const [no, yes] = name === "negatives" ? ["keep negative", "veto (correct)"] : ["mark false", "correct"];
  $("info").innerHTML = `<h4>${esc(name)}</h4>` + table(f.properties) +
    (reviewable ? `<div class="review"><button id="mark-false">${no}</button><button id="mark-correct">${yes}</button> <span id="review-msg"></span></div>` : "");
  if (reviewable) {
    $("mark-false").onclick = () => markFeature(f, "false", kind, cls);
    $("mark-correct").onclick = () => markFeature(f, "correct", kind, cls);
  }
}

function markFeature(feature, verdict, kind, cls) {
  return fetch("/api/review", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ feature, verdict, kind, class: cls }),
  }).then((r) => r.json().then((j) => ({ ok: r.ok, j }))).then(({ ok, j }) => {
    const msg = $("review-msg");
    if (msg) msg.textContent = ok ? `saved (${verdict})` : `error: ${j.error}`;
    for (const name of ["negatives", "reviews"]) {
      const layer = vectors[name];
      if (ok && layer && maps[0].hasLayer(layer)) layer.load();
    }
    return { ok, ...j };
  });
}

function fillModels() {
  const seg = state.info.models.filter((m) => m.task === "segmentation");
  for (const id of ["model", "model2"]) {
    const sel = $(id);
    sel.innerHTML = id === "model2" ? '<option value="">none</option>' : '<option value="">none</option>';
    for (const m of seg) sel.insertAdjacentHTML("beforeend", `<option>${esc(m.name)}</option>`);
  }
  state.model = seg.length ? seg[0].name : "";
  $("model").value = state.model;
  state.model2 = "";
}

function chooseCity(name) {
  state.city = name;
  state.info = state.cities[name];
  fillModels();
  rebuild();
}

function init() {
  $("threshold").value = state.threshold;
  $("threshold").oninput = (e) => {
    state.threshold = parseFloat(e.target.value);
    $("thr").textContent = state.threshold.toFixed(2);
    for (const l of Object.values(rasters)) if (l.redraw) l.redraw();
    for (const m of maps.slice(1)) m.eachLayer((l) => l.redraw && l.redraw());
  };
  $("city").onchange = (e) => chooseCity(e.target.value);
  $("model").onchange = (e) => { state.model = e.target.value; rebuild(); };
  $("model2").onchange = (e) => { state.model2 = e.target.value; rebuild(); };
  return fetch("/api/cities").then((r) => r.json()).then((cities) => {
    state.cities = cities;
    for (const n of Object.keys(cities)) $("city").insertAdjacentHTML("beforeend", `<option>${esc(n)}</option>`);
    const first = Object.keys(cities)[0];
    if (first) chooseCity(first);
    window.navml.ready = true;
  });
}

window.navml = { state, markFeature, select, tileInfo, layers: () => ({ rasters, vectors }), ready: false };
init();
