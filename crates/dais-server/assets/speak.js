// /speak?room=R&name=N[&codec=C]: join as a speaker, preview the own camera, see and hear the
// other speakers. `codec` (vp8, h264, vp9 or av1; empty or "auto" for the browser's choice) picks
// the video codec; the own tile shows the codec negotiated and then the one actually sent.
// `token` is a join token (`dais token`), required when the server has a token secret.
// `video=WxH` sets the camera size asked for (default 1280x720, which VP8 and H.264 publish as
// three simulcast layers: 320x180, 640x360, 1280x720); `simulcast=0` publishes one encoding.
// Before going on stage the page shows a preview: the camera, a choice of camera and microphone, a
// microphone level meter and mute toggles; "Join the stage" joins with what was chosen.
// `prejoin=0` skips it and goes on stage at once (scripts and tests).

import { el, openRoom, params, setStatus, showJoinForm } from './ui.js';
import { tokenClaims } from './dais.js';

// &token=T: a join token (`dais token`); the room and name default to the token's.
const token = params.get('token') || undefined;
const claims = token ? tokenClaims(token) : null;
const room = params.get('room') || claims?.room;
const name = params.get('name') || claims?.name;
const codecParam = (params.get('codec') ?? '').trim().toLowerCase();
const videoCodec = codecParam === '' || codecParam === 'auto' ? undefined : codecParam;
const [camWidth, camHeight] = (params.get('video') ?? '1280x720').split('x').map((v) => Number.parseInt(v, 10));
const simulcast = params.get('simulcast') !== '0';

if (!room || !name) showJoinForm();
else if (params.get('prejoin') === '0') start(room, name).catch(() => {}); // openRoom shows a failure
else prejoin(room, name).then((ready) => start(room, name, ready)).catch(() => {});

/** Camera constraints: the size asked for, and a device once one is chosen. */
function videoConstraints(deviceId) {
  const size = { width: { ideal: camWidth || 1280 }, height: { ideal: camHeight || 720 }, frameRate: { ideal: 30 } };
  return deviceId ? { ...size, deviceId: { exact: deviceId } } : size;
}

/** Microphone constraints: the default device, or the one chosen. */
function audioConstraints(deviceId) {
  return deviceId ? { deviceId: { exact: deviceId } } : true;
}

/**
 * A level meter on `meter` (0 to 1, the RMS of the last 1024 samples times 4, so speech at about
 * -12 dBFS fills it) for the audio of `stream`, at 0 while its track is muted (disabled);
 * `retarget` follows a new microphone, `stop` ends it.
 */
function levelMeter(stream, meter, wake) {
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  const data = new Float32Array(analyser.fftSize);
  let source = null;
  let current = stream;
  const retarget = (s) => {
    current = s;
    source?.disconnect();
    source = s.getAudioTracks().length ? ctx.createMediaStreamSource(s) : null;
    source?.connect(analyser);
  };
  retarget(stream);
  // A page opened without a click may start its audio suspended: the first click wakes it.
  if (ctx.state !== 'running') {
    ctx.resume().catch(() => {});
    wake.addEventListener('pointerdown', () => ctx.resume().catch(() => {}), { once: true });
  }
  let frame = 0;
  const tick = () => {
    analyser.getFloatTimeDomainData(data);
    let sum = 0;
    for (const v of data) sum += v * v;
    const live = current.getAudioTracks().some((t) => t.enabled && t.readyState === 'live');
    meter.value = live ? Math.min(1, Math.sqrt(sum / data.length) * 4) : 0;
    frame = requestAnimationFrame(tick);
  };
  tick();
  return { retarget, stop: () => { cancelAnimationFrame(frame); ctx.close().catch(() => {}); } };
}

/** Fill a device <select> with the devices of `kind`, selecting the one `track` uses. */
async function listDevices(select, kind, track) {
  const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === kind);
  const current = track?.getSettings().deviceId;
  select.replaceChildren(...devices.map((d, i) =>
    el('option', { value: d.deviceId }, d.label || `${kind === 'videoinput' ? 'Camera' : 'Microphone'} ${i + 1}`)));
  if (current) select.value = current;
  select.disabled = devices.length < 2;
}

/**
 * The pre-join panel: preview, device choice, level meter and mute toggles, until "Join the stage".
 * Resolves with the stream to publish and what is muted.
 * @returns {Promise<{stream: MediaStream, muted: {audio: boolean, video: boolean}}>}
 */
async function prejoin(room, name) {
  const panel = document.getElementById('prejoin');
  const grid = document.getElementById('grid');
  const preview = document.getElementById('preview');
  const cameras = document.getElementById('camera-select');
  const mics = document.getElementById('mic-select');
  const go = document.getElementById('go-live');
  grid.hidden = true;
  panel.hidden = false;
  document.getElementById('room-name').textContent = room;
  document.getElementById('prejoin-where').textContent = `Room ${room}, as ${name}`;
  setStatus('Checking your camera and microphone…');
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: audioConstraints(), video: videoConstraints() });
  } catch (err) {
    setStatus(`No camera or microphone: ${err.message}`, 'error');
    throw err;
  }
  preview.srcObject = stream;
  preview.play().catch(() => {});
  const meter = levelMeter(stream, document.getElementById('mic-level'), panel);
  const muted = { audio: false, video: false };
  const track = (kind) => (kind === 'audio' ? stream.getAudioTracks() : stream.getVideoTracks())[0];
  const refresh = () => Promise.all([listDevices(cameras, 'videoinput', track('video')), listDevices(mics, 'audioinput', track('audio'))]);
  await refresh();
  const swap = async (kind, deviceId) => {
    try {
      const fresh = await navigator.mediaDevices.getUserMedia(kind === 'audio' ? { audio: audioConstraints(deviceId) } : { video: videoConstraints(deviceId) });
      const next = fresh.getTracks()[0];
      const old = track(kind);
      next.enabled = !muted[kind];
      if (old) {
        stream.removeTrack(old);
        old.stop();
      }
      stream.addTrack(next);
      if (kind === 'audio') meter.retarget(stream);
      else preview.srcObject = stream;
    } catch (err) {
      setStatus(`Could not switch ${kind === 'audio' ? 'microphone' : 'camera'}: ${err.message}`, 'error');
    }
    await refresh();
  };
  cameras.addEventListener('change', () => swap('video', cameras.value));
  mics.addEventListener('change', () => swap('audio', mics.value));
  const toggles = [
    { button: document.getElementById('prejoin-mic'), kind: 'audio', on: 'Mute mic', off: 'Unmute mic' },
    { button: document.getElementById('prejoin-cam'), kind: 'video', on: 'Stop camera', off: 'Start camera' },
  ];
  for (const { button, kind, on, off } of toggles) {
    button.addEventListener('click', () => {
      muted[kind] = !muted[kind];
      const t = track(kind);
      if (t) t.enabled = !muted[kind];
      button.textContent = muted[kind] ? off : on;
      button.setAttribute('aria-pressed', String(muted[kind]));
      if (kind === 'video') document.getElementById('preview-off').hidden = !muted.video;
    });
  }
  setStatus('Check your camera and microphone, then join the stage.', 'ok');
  go.disabled = false;
  await new Promise((resolve) => go.addEventListener('click', resolve, { once: true }));
  meter.stop();
  preview.srcObject = null;
  panel.hidden = true;
  grid.hidden = false;
  return { stream, muted };
}

async function start(room, name, ready = null) {
  let stream = ready?.stream ?? null;
  const { client, grid } = await openRoom({
    room, name, role: 'speaker', token,
    onLeave: () => stream?.getTracks().forEach((t) => t.stop()),
  });

  const self = { id: client.participantId, name: `${name} (you)`, local: true };
  const tile = grid.ensure(self);
  if (!stream) {
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: audioConstraints(), video: videoConstraints() });
    } catch (err) {
      setStatus(`No camera or microphone: ${err.message}`, 'error');
      return;
    }
  }
  const preview = tile.querySelector('video');
  preview.srcObject = stream;
  tile.dataset.hasVideo = 'true';
  preview.play().catch(() => {});

  const toggles = [
    { button: document.getElementById('toggle-mic'), kind: 'audio', on: 'Mute mic', off: 'Unmute mic' },
    { button: document.getElementById('toggle-cam'), kind: 'video', on: 'Stop camera', off: 'Start camera' },
  ];
  const setMuted = ({ button, kind, on, off }, muted) => {
    client.setMuted(kind, muted);
    grid.setMuted(client.participantId, kind, muted);
    button.textContent = muted ? off : on;
    button.setAttribute('aria-pressed', String(muted));
  };
  for (const toggle of toggles) {
    toggle.button.addEventListener('click', () => setMuted(toggle, !client.muted[toggle.kind]));
    // What was muted before going on stage stays muted.
    if (ready?.muted[toggle.kind]) setMuted(toggle, true);
  }

  const codecLabel = el('span', { class: 'codec', title: 'video codec' });
  tile.querySelector('.label').append(codecLabel);
  let codecs;
  try {
    codecs = await client.publish(stream, { videoCodec, simulcast });
  } catch (err) {
    setStatus(`Could not publish: ${err.message}`, 'error');
    return;
  }
  showCodec(codecLabel, codecs.video, 'negotiated');
  watchSentCodec(client, codecLabel);
}

/** Show a codec name on the own tile; `source` says where it came from (data-codec-source). */
function showCodec(node, codec, source, detail = '') {
  if (!codec) return;
  node.textContent = codec.toUpperCase();
  node.title = `video codec (${source})${detail ? `: ${detail}` : ''}`;
  node.dataset.codec = codec;
  node.dataset.codecSource = source;
}

// Confirm from getStats what is on the wire: the outbound-rtp video entry's codecId names a codec
// entry. Polls until the first video packets are out, then every few seconds (an encoder can be
// replaced while running), until the client closes.
function watchSentCodec(client, node) {
  let timer = 0;
  const check = async () => {
    const pc = client.pc;
    if (!pc || pc.connectionState === 'closed') return;
    try {
      const stats = await pc.getStats();
      let sent = null;
      stats.forEach((r) => {
        if (r.type === 'outbound-rtp' && r.kind === 'video' && r.codecId && (r.packetsSent ?? 0) > 0) sent = r;
      });
      const codec = sent && stats.get(sent.codecId);
      if (codec?.mimeType) {
        const name = codec.mimeType.replace(/^video\//i, '').toLowerCase();
        showCodec(node, name, 'sending', [codec.sdpFmtpLine, sent.encoderImplementation].filter(Boolean).join(', '));
      }
    } catch {
      // getStats() on a closing connection; the next round or the close ends it.
    }
    timer = setTimeout(check, node.dataset.codecSource === 'sending' ? 5000 : 500);
  };
  client.on('close', () => clearTimeout(timer));
  check();
}
