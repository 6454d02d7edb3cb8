"use strict";
// The live-play page (docs/play.md): one WebSocket session, keys → actions, frames → canvas.
// Key-to-photon latency: each action carries t_client = performance.now() at the key event; the server echoes
// it in the header of the first frame that reflects the action, and the sample is taken when that frame has
// been drawn, in the animation frame that paints it.

const $ = (id) => document.getElementById(id);
const KEYS = {
  ArrowUp: "up", KeyW: "up", ArrowDown: "down", KeyS: "down",
  ArrowLeft: "left", KeyA: "left", ArrowRight: "right", KeyD: "right", Space: "fire",
};
const KEY_LABELS = { up: "↑ W", down: "↓ S", left: "← A", right: "→ D", fire: "Space" };
// Pong's paddle moves vertically: the ALE calls "up" RIGHT and "down" LEFT
const ALIASES = { "atari/Pong": { up: "right", down: "left", left: null, right: null } };
const LATENCY_WINDOW_MS = 10000;
const FPS_WINDOW_MS = 2000;

let health = null;
let ws = null;
let sideBySide = false;
let sentAction = -1;
const held = [];                     // logical keys held down, the last pressed last
const pending = { model: null, emu: null };  // decoded frames waiting for the next paint (newest wins)
const painted = { model: -1, emu: -1 };      // the index of the frame each canvas shows
const shownAt = [];                  // performance.now() of every painted model frame
const latencies = [];                // [time, ms] of every echoed frame painted
let server = null;                   // the last stats message
const frames = { model: null, emu: null };   // ImageData of what each canvas shows (diff view, tests)

function canvasOf(kind) { return kind === "emu" ? $("emulator") : $("screen"); }

function setStatus(text) { $("status").textContent = text; }
let errorTimer = null;
function showError(text) {
  $("error").textContent = text;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => { $("error").textContent = ""; }, 6000);
}

function actionFor(keys) {
  if (!health || !health.actions.length) return -1;
  const names = health.actions.map((n) => n.toLowerCase());
  const alias = ALIASES[health.world] || {};
  let dir = null;
  for (const k of keys) if (k !== "fire") dir = k in alias ? alias[k] : k;
  const fire = keys.includes("fire");
  const tries = [];
  if (dir && fire) tries.push(dir + "fire");
  if (dir) tries.push(dir);
  if (fire) tries.push("fire");
  tries.push("none", "noop");
  for (const t of tries) { const i = names.indexOf(t); if (i >= 0) return i; }
  return 0;
}

function buildKeyTable() {
  const body = $("keys").querySelector("tbody");
  body.innerHTML = "";
  for (const key of ["up", "down", "left", "right", "fire"]) {
    const a = actionFor([key]);
    const none = actionFor([]);
    if (a < 0 || (a === none && key !== "fire")) continue;
    if (key === "fire" && a === none) continue;
    const tr = document.createElement("tr");
    tr.dataset.key = key;
    const th = document.createElement("th");
    for (const label of KEY_LABELS[key].split(" ")) {
      const k = document.createElement("kbd");
      k.textContent = label;
      th.appendChild(k);
      th.appendChild(document.createTextNode(" "));
    }
    const td = document.createElement("td");
    const alias = (ALIASES[health.world] || {})[key];
    td.textContent = health.actions[a] + (alias ? ` (moves ${key})` : "");
    tr.append(th, td);
    body.appendChild(tr);
  }
  const tr = document.createElement("tr");
  tr.innerHTML = "<th><kbd>Enter</kbd></th><td>start / restart</td>";
  body.appendChild(tr);
}

function sendAction() {
  const a = actionFor(held);
  for (const tr of $("keys").querySelectorAll("tr[data-key]")) tr.classList.toggle("held", held.includes(tr.dataset.key));
  if (a < 0 || a === sentAction || !ws || ws.readyState !== WebSocket.OPEN) return;
  sentAction = a;
  ws.send(JSON.stringify({ type: "action", action: a, t_client: performance.now() }));
}

function onKey(ev, down) {
  const key = KEYS[ev.code];
  if (!key) return;
  const tag = ev.target && ev.target.tagName;
  if (tag === "INPUT" || tag === "SELECT") return;
  ev.preventDefault();
  const i = held.indexOf(key);
  if (i >= 0) held.splice(i, 1);
  if (down) held.push(key);
  sendAction();
}

function connect() {
  return new Promise((resolve) => {
    ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => resolve();
    ws.onclose = (ev) => { setStatus(`disconnected (${ev.code}${ev.reason ? ": " + ev.reason : ""}); press Start`); ws = null; };
    ws.onmessage = onMessage;
  });
}

function onMessage(ev) {
  if (typeof ev.data === "string") return onControl(JSON.parse(ev.data));
  const bytes = new Uint8Array(ev.data);
  const emu = bytes.length > 4 && bytes[0] === 0x45 && bytes[1] === 0x4d && bytes[2] === 0x55 && bytes[3] === 0x31;
  const off = emu ? 4 : 0;
  const view = new DataView(ev.data, off, 16);
  const f = { index: view.getUint32(0, true), action: view.getUint32(4, true), t: view.getFloat64(8, true) };
  const kind = emu ? "emu" : "model";
  createImageBitmap(new Blob([bytes.subarray(off + 16)], { type: "image/png" })).then((bmp) => {
    f.bmp = bmp;
    const old = pending[kind];
    if (old && old.index > f.index) return;
    if (old && old.t >= 0 && f.t < 0) f.t = old.t;  // a replaced frame's echo goes to its successor
    pending[kind] = f;
  });
}

function onControl(msg) {
  if (msg.type === "ready") {
    sideBySide = !!msg.side_by_side;
    $("emulator-view").hidden = !sideBySide;
    $("diff-view").hidden = !sideBySide;
    scaleCanvases();
    painted.model = painted.emu = -1;
    sentAction = 0;  // a new stream holds action 0 (none / NOOP): only keys already down need sending
    sendAction();
    setStatus(`playing: seed ${msg.seed}${msg.prompt ? `, “${msg.prompt}”` : ""}`);
  } else if (msg.type === "error") {
    showError(msg.message);
  } else if (msg.type === "stats") {
    server = msg;
  }
}

function paint() {
  const now = performance.now();
  for (const kind of ["model", "emu"]) {
    const f = pending[kind];
    if (!f) continue;
    pending[kind] = null;
    const c = canvasOf(kind);
    if (c.width !== f.bmp.width || c.height !== f.bmp.height) { c.width = f.bmp.width; c.height = f.bmp.height; }
    const ctx = c.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(f.bmp, 0, 0);
    f.bmp.close();
    frames[kind] = { index: f.index, data: ctx.getImageData(0, 0, c.width, c.height) };
    painted[kind] = f.index;
    if (kind === "model") {
      shownAt.push(now);
      if (f.t >= 0) latencies.push([now, now - f.t]);
      $("frame").textContent = f.index;
      $("action").textContent = f.action === 0xffffffff ? "none (start)" : (health.actions[f.action] ?? f.action);
    }
  }
  if (sideBySide && frames.model && frames.emu && frames.model.index === frames.emu.index) drawDiff();
  requestAnimationFrame(paint);
}

function drawDiff() {
  const a = frames.model.data, b = frames.emu.data;
  if (a.width !== b.width || a.height !== b.height) return;
  const c = $("diff");
  c.width = a.width; c.height = a.height;
  const out = new ImageData(a.width, a.height);
  let sum = 0;
  for (let i = 0; i < a.data.length; i += 4) {
    for (let ch = 0; ch < 3; ch++) {
      const d = Math.abs(a.data[i + ch] - b.data[i + ch]);
      out.data[i + ch] = Math.min(255, 2 * d);
      sum += d;
    }
    out.data[i + 3] = 255;
  }
  c.getContext("2d").putImageData(out, 0, 0);
  $("diff-value").textContent = `mean ${(sum / (3 * a.width * a.height)).toFixed(1)}`;
}

function quantile(sorted, q) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

function stats() {
  const now = performance.now();
  while (shownAt.length && shownAt[0] < now - FPS_WINDOW_MS) shownAt.shift();
  while (latencies.length && latencies[0][0] < now - LATENCY_WINDOW_MS) latencies.shift();
  const lat = latencies.map((x) => x[1]).sort((x, y) => x - y);
  return { fps: shownAt.length / (FPS_WINDOW_MS / 1000), latency_p50: quantile(lat, 0.5),
           latency_p99: quantile(lat, 0.99), latency_n: lat.length, frame: painted.model, server };
}

function showStats() {
  const s = stats();
  const ms = (x) => (Number.isFinite(x) ? `${x.toFixed(1)} ms` : "–");
  $("fps").textContent = s.fps.toFixed(1);
  $("lat-p50").textContent = ms(s.latency_p50);
  $("lat-p99").textContent = ms(s.latency_p99);
  $("lat-n").textContent = s.latency_n;
  if (server) {
    $("server-fps").textContent = server.fps.toFixed(1);
    $("gen-ms").textContent = `${server.gen_ms_p50.toFixed(1)} / ${server.gen_ms_p99.toFixed(1)} ms`;
    $("dropped").textContent = server.dropped ?? "–";
  }
}

function scaleCanvases() {
  const [h, w] = health.frame_size;
  const views = sideBySide ? 3 : 1;  // model, game and their difference side by side
  const room = Math.min(480, (window.innerWidth - 380) / views - 16 * (views - 1));
  const scale = Math.max(1, Math.floor(room / Math.max(h, w)));
  for (const id of ["screen", "emulator", "diff"]) {
    const c = $(id);
    c.width = w; c.height = h;
    c.style.width = `${w * scale}px`;
    c.style.height = `${h * scale}px`;
  }
}

async function start(ev) {
  if (ev) ev.preventDefault();
  if (!ws || ws.readyState !== WebSocket.OPEN) await connect();
  const msg = { type: "start", seed: Math.max(0, parseInt($("seed").value, 10) || 0), side_by_side: health.side_by_side };
  if (health.prompts.length) msg.prompt = $("prompt").value;
  const gs = $("game-state").value.trim();
  if (health.starts_from_game_state && gs) msg.game_state = gs;
  ws.send(JSON.stringify(msg));
  setStatus("starting…");
  if (document.activeElement) document.activeElement.blur();
}

async function main() {
  health = await (await fetch("/health")).json();
  $("model").textContent = `${health.model} · ${health.world} · ${health.pattern} · window ${health.window}` +
    ` + sink ${health.sink} blocks · ${health.fps_target} fps target`;
  if (health.prompts.length) {
    $("prompt-row").hidden = false;
    for (const p of health.prompts) {
      const o = document.createElement("option");
      o.value = o.textContent = p;
      $("prompt").appendChild(o);
    }
  }
  $("state-row").hidden = !health.starts_from_game_state;
  buildKeyTable();
  scaleCanvases();
  window.addEventListener("resize", scaleCanvases);
  window.addEventListener("keydown", (ev) => {
    if (ev.code === "Enter" || ev.code === "NumpadEnter") { start(ev); return; }
    onKey(ev, true);
  });
  window.addEventListener("keyup", (ev) => onKey(ev, false));
  window.addEventListener("blur", () => { held.length = 0; sendAction(); });
  $("start-form").addEventListener("submit", start);
  await connect();
  setStatus("connected: press Start (or Enter)");
  requestAnimationFrame(paint);
  setInterval(showStats, 250);
}

window.play = { stats, frames, painted, held };  // what tests and curious players read
main().catch((e) => showError(`could not load the model's description: ${e}`));
