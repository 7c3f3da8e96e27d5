// The webcam tab's live view: the visitor's camera plays in a <video> at its own rate and the
// skeletons the server sends back are drawn over it on a <canvas>. Frames go up a WebSocket
// (/live/ws) as JPEG, at most `inflight` at a time (a new camera frame is sent only when an
// answer came back, so nothing queues); each answer is one JSON Lines record of the CLI:
// {"frame", "pts", "poses": [{"track_id", "box", "score", "keypoints"}]} in camera pixels.
// Where the WebSocket cannot connect, the page's older image stream (#webcam-fallback) shows.
(() => {
  "use strict";
  const params = new URLSearchParams(location.search);
  const live = {
    inflight: Math.max(1, Math.min(2, Number(params.get("inflight")) || 2)),
    quality: 0.75,
    connectTimeoutMs: 5000,
    // Read by tests and the measuring script: counters, and a hook per drawn pose update.
    updates: 0, sent: 0, videoFrames: 0, fps: null, latencyMs: null, status: "", mode: "idle",
    onCapture: null, onDraw: null,
  };
  window.ccmLive = live;

  let style = null;  // from the server's hello: limbs, colours, keypoint threshold
  let ws = null, stream = null, video, canvas, ctx, grab, grabCtx, button, statusLine;
  let pending = 0, frameIndex = 0, latest = null, lastUpdate = null, interval = null;
  let sending = Promise.resolve();  // the chain of JPEG sends, in the order frames were taken
  const sentAt = new Map();  // frame index -> when the video showed it (performance.now ms)

  function say(text) { live.status = text; statusLine.textContent = text; }

  function build(root) {
    root.innerHTML = "";
    const view = document.createElement("div");
    view.className = "ccm-live-view";
    video = document.createElement("video");
    video.muted = true; video.playsInline = true; video.autoplay = true;
    canvas = document.createElement("canvas");
    view.append(video, canvas);
    const bar = document.createElement("div");
    bar.className = "ccm-live-bar";
    button = document.createElement("button");
    button.className = "lg primary"; button.textContent = "Record"; button.id = "live-record";
    statusLine = document.createElement("span");
    statusLine.id = "live-status";
    bar.append(button, statusLine);
    root.append(view, bar);
    ctx = canvas.getContext("2d");
    grab = document.createElement("canvas");
    grabCtx = grab.getContext("2d", {willReadFrequently: true});
    button.addEventListener("click", () => (live.mode === "idle" ? start() : stop("Stopped.")));
    if (params.get("live") === "off") fallback("the live view is switched off (?live=off)");
  }

  function fallback(reason) {
    stop(null);
    live.mode = "fallback";
    const row = document.querySelector("#webcam-fallback");
    if (row) row.classList.add("ccm-shown");
    video.parentElement.classList.add("ccm-hidden");
    button.disabled = true;
    say(`Live view unavailable (${reason}): using the slower image stream below instead.`);
  }

  async function sessionToken() {  // set by the page's load event; wait for it a little
    for (let i = 0; i < 100; i++) {
      const holder = document.querySelector("#live-session [data-session]");
      if (holder) return holder.dataset.session;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    return "";  // the server then uses the default settings
  }

  async function start() {
    live.mode = "connecting";
    button.textContent = "Stop";
    say("Connecting...");
    const token = await sessionToken();
    try {
      stream = await navigator.mediaDevices.getUserMedia({video: true, audio: false});
    } catch (err) {
      stop(`The camera could not be opened: ${err.message || err.name}.`);
      return;
    }
    video.srcObject = stream;
    await video.play().catch(() => {});
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const base = location.pathname.replace(/[^/]*$/, "");
    const session = encodeURIComponent(token);
    const socket = new WebSocket(`${scheme}://${location.host}${base}live/ws?session=${session}`);
    socket.binaryType = "arraybuffer";
    ws = socket;
    const timer = setTimeout(() => {
      if (socket.readyState !== WebSocket.OPEN) fallback("no answer from the live connection");
    }, live.connectTimeoutMs);
    socket.onopen = () => { clearTimeout(timer); };
    socket.onerror = () => {
      clearTimeout(timer);
      if (live.mode === "connecting") fallback("the live connection was refused");
    };
    socket.onclose = (event) => {
      clearTimeout(timer);
      if (ws !== socket) return;
      if (live.mode === "connecting") fallback("the live connection closed at once");
      else if (live.mode === "streaming") stop(event.reason || "Connection closed.");
    };
    socket.onmessage = (event) => answer(socket, JSON.parse(event.data));
    video.requestVideoFrameCallback(onVideoFrame);
  }

  function stop(message) {
    const socket = ws;
    ws = null;
    if (socket) socket.close();
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    pending = 0; latest = null; lastUpdate = null; interval = null; sentAt.clear();
    live.fps = null; live.latencyMs = null;
    if (live.mode !== "fallback") live.mode = "idle";
    if (button) button.textContent = "Record";
    if (ctx) ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (message !== null && statusLine) say(message);
  }

  function answer(socket, message) {
    if (socket !== ws) return;
    if (message.hello) {
      style = message.hello;
      live.mode = "streaming";
      say("Streaming.");
      return;
    }
    if (message.error) {
      if (message.fatal) stop(message.error); else { pending = Math.max(0, pending - 1); say(message.error); }
      return;
    }
    pending = Math.max(0, pending - 1);
    if (message.skipped !== undefined) { sentAt.delete(message.skipped); return; }
    const shown = sentAt.get(message.frame);
    sentAt.delete(message.frame);
    const now = performance.now();
    if (lastUpdate !== null) {  // updates per second from the smoothed time between them
      const gap = now - lastUpdate;
      interval = interval === null ? gap : 0.9 * interval + 0.1 * gap;
      live.fps = 1000 / Math.max(interval, 1);
    }
    lastUpdate = now;
    latest = message;
    if (shown !== undefined) live.latencyMs = now - shown;
    draw();
    live.updates += 1;
    if (live.onDraw) live.onDraw(message, performance.now());
  }

  function onVideoFrame(now, meta) {
    if (!stream) return;
    live.videoFrames += 1;
    if (canvas.width !== video.videoWidth || canvas.height !== video.videoHeight) {
      canvas.width = video.videoWidth; canvas.height = video.videoHeight; draw();
    }
    if (ws && live.mode === "streaming" && pending < live.inflight) send(now);
    video.requestVideoFrameCallback(onVideoFrame);
  }

  function send(shownAt) {
    const index = frameIndex++;
    const [w, h] = [video.videoWidth, video.videoHeight];
    if (!w || !h) return;
    if (grab.width !== w || grab.height !== h) { grab.width = w; grab.height = h; }
    grabCtx.drawImage(video, 0, 0, w, h);
    if (live.onCapture) live.onCapture(grabCtx, index, shownAt);
    pending += 1;
    sentAt.set(index, shownAt);
    const socket = ws;
    // JPEG encoding is asynchronous and the first one is slow: send in the order taken.
    const encoded = new Promise((resolve) => grab.toBlob(resolve, "image/jpeg", live.quality));
    sending = sending.then(() => encoded).then((blob) => {
      if (!blob || socket !== ws || socket.readyState !== WebSocket.OPEN) return;
      const header = new DataView(new ArrayBuffer(12));
      header.setUint32(0, index, true);
      header.setFloat64(4, shownAt, true);
      socket.send(new Blob([header, blob]));
      live.sent += 1;
    });
  }

  function trackColor(id) {  // as realtime/render.py: golden-ratio hues, saturation 0.7
    if (id < 0) return "rgb(160,160,160)";
    const h = (id * 0.618033988749895) % 1, s = 0.7, i = Math.floor(h * 6), f = h * 6 - i;
    const [p, q, t] = [1 - s, 1 - s * f, 1 - s * (1 - f)];
    const rgb = [[1, t, p], [q, 1, p], [p, 1, t], [p, q, 1], [t, p, 1], [1, p, q]][i % 6];
    return `rgb(${rgb.map((v) => Math.round(v * 255)).join(",")})`;
  }

  function draw() {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!latest || !style) return;
    const unit = Math.max(1, Math.min(canvas.width, canvas.height) / 480);
    const thr = style.keypoint_thr;
    const rgb = (c) => `rgb(${c.join(",")})`;
    ctx.lineCap = "round";
    for (const person of latest.poses) {
      const k = person.keypoints;
      ctx.lineWidth = 3 * unit;
      style.limbs.forEach(([a, b], n) => {
        if (k[a][2] <= thr || k[b][2] <= thr) return;
        ctx.strokeStyle = rgb(style.limb_colors[n]);
        ctx.beginPath(); ctx.moveTo(k[a][0], k[a][1]); ctx.lineTo(k[b][0], k[b][1]); ctx.stroke();
      });
      k.forEach(([x, y, score], n) => {
        if (score <= thr) return;
        ctx.fillStyle = rgb(style.keypoint_colors[n]);
        ctx.beginPath(); ctx.arc(x, y, 3 * unit, 0, 2 * Math.PI); ctx.fill();
      });
      if (person.track_id >= 0) {
        ctx.font = `bold ${Math.round(14 * unit)}px sans-serif`;
        ctx.fillStyle = trackColor(person.track_id);
        ctx.fillText(`#${person.track_id}`, person.box[0], Math.max(person.box[1] - 4, 14 * unit));
      }
    }
    const fps = live.fps === null ? "--" : live.fps.toFixed(1);
    const lat = live.latencyMs === null ? "--" : Math.round(live.latencyMs);
    const text = `${fps} poses/s  ${lat} ms`;
    ctx.font = `${Math.round(16 * unit)}px sans-serif`;
    ctx.fillStyle = "rgba(0,0,0,0.55)";
    ctx.fillRect(0, 0, ctx.measureText(text).width + 12 * unit, 24 * unit);
    ctx.fillStyle = "white";
    ctx.fillText(text, 6 * unit, 17 * unit);
  }

  const wait = setInterval(() => {
    const root = document.querySelector("#live-view");
    if (root && !root.dataset.built) { root.dataset.built = "1"; build(root); clearInterval(wait); }
  }, 100);
  window.addEventListener("pagehide", () => stop(null));
})();
