// lipsync studio: WebRTC to the engine, controls, charts, and latency measured in this browser.
//
// Round trip (microphone -> lips on screen) is timed here, from this page's own clocks: a speech
// onset in the microphone signal (level rises after a pause) is paired with the next onset of
// motion in the mouth region of the decoded avatar video (frames start changing after a rest).
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token");
const $ = (id) => document.getElementById(id);
const video = $("avatar");

const MIC_ONSET_LEVEL = 0.02;      // RMS, full scale 1; speech in a room is well above, hiss below
const MIC_QUIET_MS = 300;          // a pause at least this long makes the next rise an onset
const PIXEL_CHANGE = 6;            // a mouth pixel's green changed by more than this (0..255)
const MOTION_LEVEL = 2;            // ... in at least this % of the mouth's pixels: the lips move
const MOTION_REST_MS = 300;
const MAX_PAIR_MS = 1000;          // lips moving this long after a speech onset do not answer it
const HISTORY = 120;               // points per chart (seconds)

const metrics = {
  connected: false, micOnsets: [], videoOnsets: [], rtts: [], decodedFps: [], framesDecoded: 0,
  frames: 0, motion: [], micLevel: [], missed: 0, mouthBox: null,
};
window.studio = { metrics, connect, disconnect, speak, interrupt };

let pc = null, mic = null, audioCtx = null, micTimer = null, statsTimer = null;

function api(path) {
  return token ? `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : path;
}

function say(text) { $("message").textContent = text; }

async function postFile(path, file) {
  const form = new FormData();
  form.append("file", file);
  const r = await fetch(api(path), { method: "POST", body: form });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

async function connect(withMic = true) {
  if (pc) await disconnect();
  say("connecting…");
  pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  mic = null;
  if (withMic) {
    try {
      mic = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
      pc.addTrack(mic.getAudioTracks()[0], mic);
    } catch (e) {
      say(`no microphone (${e.name}); the avatar will speak uploaded files only`);
    }
  }
  if (!mic) pc.addTransceiver("audio", { direction: "recvonly" });
  const remote = new MediaStream();
  pc.ontrack = (ev) => {
    // Loopback or LAN: no reason to hold frames back beyond what jitter needs (Chrome adapts).
    if ("jitterBufferTarget" in ev.receiver) ev.receiver.jitterBufferTarget = 0;
    remote.addTrack(ev.track);
    video.srcObject = remote;
  };
  pc.onconnectionstatechange = () => {
    $("state").textContent = pc ? pc.connectionState : "disconnected";
    metrics.connected = !!pc && pc.connectionState === "connected";
  };
  await pc.setLocalDescription(await pc.createOffer());
  await gatheringDone(pc);
  const r = await fetch(api("/offer"), {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
  });
  const answer = await r.json();
  if (!r.ok) { say(answer.error); await disconnect(); return; }
  await pc.setRemoteDescription(answer);
  try { await video.play(); } catch (e) {
    // Autoplay with sound needs a click on most browsers: play muted until then.
    video.muted = true; $("unmute").hidden = false;
    video.play().catch(() => {});
  }
  if (mic) watchMic(mic);
  video.requestVideoFrameCallback(onFrame);
  $("connect").disabled = $("connect-nomic").disabled = true;
  $("disconnect").disabled = false;
  say("");
}

function gatheringDone(conn) {
  if (conn.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => { if (conn.iceGatheringState === "complete") resolve(); };
    conn.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 2000);  // host candidates only: gathering is quick, never wait forever
  });
}

async function disconnect() {
  if (micTimer) clearInterval(micTimer);
  micTimer = null;
  if (mic) mic.getTracks().forEach((t) => t.stop());
  if (pc) { pc.close(); pc = null; }
  if (audioCtx) { await audioCtx.close(); audioCtx = null; }
  metrics.connected = false;
  $("state").textContent = "disconnected";
  $("connect").disabled = $("connect-nomic").disabled = false;
  $("disconnect").disabled = true;
  navigator.sendBeacon(api("/api/bye"));
}

// -- the microphone's speech onsets ---------------------------------------------------------------
function watchMic(stream) {
  audioCtx = new AudioContext();
  const src = audioCtx.createMediaStreamSource(stream);
  const an = audioCtx.createAnalyser();
  an.fftSize = 512;
  src.connect(an);
  const buf = new Float32Array(an.fftSize);
  let quietSince = performance.now(), speaking = false;
  micTimer = setInterval(() => {
    an.getFloatTimeDomainData(buf);
    let e = 0;
    for (const v of buf) e += v * v;
    const rms = Math.sqrt(e / buf.length), now = performance.now();
    metrics.micLevel.push([now, rms]);
    if (metrics.micLevel.length > 6000) metrics.micLevel.shift();
    if (rms >= MIC_ONSET_LEVEL) {
      if (!speaking && now - quietSince >= MIC_QUIET_MS) metrics.micOnsets.push(now);
      speaking = true;
    } else {
      if (speaking) quietSince = now;
      speaking = false;
    }
  }, 10);
}

// -- the avatar's lip motion, frame by frame ------------------------------------------------------
const probe = document.createElement("canvas");
probe.width = 48; probe.height = 24;
const probeCtx = probe.getContext("2d", { willReadFrequently: true });
let prevMouth = null, restSince = performance.now(), moving = false, pendingMic = 0;

function onFrame(now, meta) {
  metrics.frames += 1;
  const box = metrics.mouthBox;
  if (box && video.videoWidth) {
    const sx = video.videoWidth / box.width, sy = video.videoHeight / box.height;
    const [x, y, w, h] = box.mouth_box;
    probeCtx.drawImage(video, x * sx, y * sy, w * sx, h * sy, 0, 0, probe.width, probe.height);
    const px = probeCtx.getImageData(0, 0, probe.width, probe.height).data;
    if (prevMouth) {
      // The share of mouth pixels that changed visibly: codec noise on a still face stays under
      // PIXEL_CHANGE, while a moving mouth changes a patch of pixels well past it.
      let changed = 0;
      for (let i = 0; i < px.length; i += 4) if (Math.abs(px[i + 1] - prevMouth[i + 1]) > PIXEL_CHANGE) changed += 1;
      const motion = (100 * changed) / (px.length / 4);
      const t = meta.presentationTime || now;
      metrics.motion.push([t, motion]);
      if (metrics.motion.length > 6000) metrics.motion.shift();
      if (motion >= MOTION_LEVEL) {
        if (!moving && t - restSince >= MOTION_REST_MS) onLipsOnset(t);
        moving = true;
      } else {
        if (moving) restSince = t;
        moving = false;
      }
    }
    prevMouth = px;
  }
  if (pc) video.requestVideoFrameCallback(onFrame);
}

function onLipsOnset(t) {
  metrics.videoOnsets.push(t);
  // The answer to the earliest speech onset not yet answered, if recent enough; older ones
  // (speech the lips never answered) are counted as missed.
  while (pendingMic < metrics.micOnsets.length && t - metrics.micOnsets[pendingMic] > MAX_PAIR_MS) {
    pendingMic += 1;
    metrics.missed += 1;
  }
  if (pendingMic < metrics.micOnsets.length && metrics.micOnsets[pendingMic] <= t) {
    const m = metrics.micOnsets[pendingMic];
    metrics.rtts.push({ mic: m, lips: t, ms: t - m });
    // Onsets the same lips answer (a pause shorter than the lips could show) are not counted twice.
    while (pendingMic < metrics.micOnsets.length && metrics.micOnsets[pendingMic] <= t) pendingMic += 1;
  }
}

function percentile(values, q) {
  if (!values.length) return null;
  const a = [...values].sort((x, y) => x - y);
  return a[Math.min(a.length - 1, Math.floor(q / 100 * a.length))];
}

// -- stats and charts, once a second --------------------------------------------------------------
const series = { sent: [], decoded: [], proc: [], a2f: [], rtt: [], rttP95: [], dropped: [], cpu: [] };
let lastSent = null, lastDecoded = null, lastT = null;

function push(name, v) {
  series[name].push(v);
  if (series[name].length > HISTORY) series[name].shift();
}

async function tick() {
  let s;
  try {
    const r = await fetch(api("/api/stats"));
    s = await r.json();
    if (!r.ok) { say(s.error); return; }
  } catch (e) { return; }  // the server restarting: the next tick tries again
  metrics.mouthBox = s.avatar;
  const now = performance.now(), dt = lastT ? (now - lastT) / 1000 : null;
  const sess = s.session;
  $("mode").textContent = sess ? sess.mode : "";
  const sent = sess ? sess.webrtc.video_frames_sent : 0;
  let decoded = metrics.framesDecoded;
  if (pc) {
    const report = await pc.getStats();
    report.forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") decoded = r.framesDecoded || 0; });
  }
  if (dt) {
    push("sent", lastSent === null || sent < lastSent ? 0 : (sent - lastSent) / dt);
    const fps = lastDecoded === null || decoded < lastDecoded ? 0 : (decoded - lastDecoded) / dt;
    push("decoded", fps);
    if (pc) metrics.decodedFps.push([now, fps]);
  }
  lastSent = sent; lastDecoded = decoded; lastT = now; metrics.framesDecoded = decoded;
  const eng = sess && sess.engine, sec = sess && sess.last_second;
  push("proc", sec ? sec.processing_ms.p95 : null);
  push("a2f", sec ? sec.audio_to_frame_ms.p95 : null);
  const rt = metrics.rtts.map((r) => r.ms);
  push("rtt", rt.length ? rt[rt.length - 1] : null);
  push("rttP95", percentile(rt, 95));
  push("dropped", eng ? eng.dropped : null);
  push("cpu", s.process.cpu_percent);
  draw("chart-fps", [series.sent, series.decoded], 35);
  draw("chart-latency", [series.proc, series.a2f], 100);
  draw("chart-rtt", [series.rtt, series.rttP95], 400);
  draw("chart-load", [series.dropped, series.cpu], 100);
  const fmt = (v) => (v === null || v === undefined ? "–" : Math.round(v));
  $("numbers").textContent =
    `mode ${sess ? sess.mode : "–"} · sent ${fmt(series.sent.at(-1))} fps · decoded ${fmt(series.decoded.at(-1))} fps` +
    ` · round trip p50 ${fmt(percentile(rt, 50))} p95 ${fmt(percentile(rt, 95))} ms (${rt.length})` +
    ` · cpu ${fmt(s.process.cpu_percent)}% · rss ${fmt(s.process.rss_mb)} MB` +
    (sess && sess.errors.length ? ` · ${sess.errors.join("; ")}` : "");
}

function draw(id, lines, floorMax) {
  const c = $(id), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  let max = floorMax;
  for (const l of lines) for (const v of l) if (v !== null && v > max) max = v;
  g.strokeStyle = "#33373d"; g.fillStyle = "#777"; g.font = "10px sans-serif";
  for (const f of [0.5, 1]) {
    const y = c.height - f * (c.height - 12);
    g.beginPath(); g.moveTo(0, y); g.lineTo(c.width, y); g.stroke();
    g.fillText(Math.round(max * f), 2, y + 10);
  }
  ["#5dade2", "#f5b041"].forEach((color, k) => {
    const l = lines[k] || [];
    g.strokeStyle = color; g.lineWidth = 1.5; g.beginPath();
    let started = false;
    l.forEach((v, i) => {
      if (v === null) { started = false; return; }
      const x = c.width - (l.length - 1 - i) * (c.width / HISTORY);
      const y = c.height - (v / max) * (c.height - 12);
      if (started) g.lineTo(x, y); else g.moveTo(x, y);
      started = true;
    });
    g.stroke();
  });
}

// -- controls -------------------------------------------------------------------------------------
async function speak(file) {
  const body = await postFile("/api/speak", file);
  say(`speaking ${body.seconds} s`);
  return body;
}

async function interrupt() {
  const r = await fetch(api("/api/interrupt"), { method: "POST" });
  return r.json();
}

$("connect").onclick = () => connect(true).catch((e) => say(String(e)));
$("connect-nomic").onclick = () => connect(false).catch((e) => say(String(e)));
$("disconnect").onclick = () => disconnect();
$("unmute").onclick = () => { video.muted = false; $("unmute").hidden = true; };
$("interrupt").onclick = () => interrupt().then((b) => say(b.interrupted ? "interrupted" : "nothing playing"));
$("speak-form").onsubmit = (ev) => {
  ev.preventDefault();
  const f = $("speak-file").files[0];
  if (f) speak(f).catch((e) => say(e.message));
};
$("avatar-form").onsubmit = (ev) => {
  ev.preventDefault();
  const f = $("avatar-file").files[0];
  if (!f) return;
  say("loading avatar…");
  postFile("/api/avatar", f).then((b) => say(`avatar ${b.name}: ${b.width}x${b.height}`)).catch((e) => say(e.message));
};
window.addEventListener("pagehide", () => { if (pc) navigator.sendBeacon(api("/api/bye")); });

statsTimer = setInterval(tick, 1000);
tick();
if (params.get("autostart") === "1") connect(true).catch((e) => say(String(e)));
