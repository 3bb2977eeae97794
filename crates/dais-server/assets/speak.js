// /speak?room=R&name=N[&codec=C]: join as a speaker, preview the own camera, see and hear the
// other speakers. `codec` (vp8, h264, vp9 or av1; empty or "auto" for the browser's choice) picks
// the video codec; the own tile shows the codec negotiated and then the one actually sent.
// `token` is a join token (`dais token`), required when the server has a token secret.
// `video=WxH` sets the camera size asked for (default 1280x720, which VP8 and H.264 publish as
// three simulcast layers: 320x180, 640x360, 1280x720); `simulcast=0` publishes one encoding.

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
else start(room, name).catch(() => {}); // openRoom already shows the failure

async function start(room, name) {
  let stream = null;
  const { client, grid } = await openRoom({
    room, name, role: 'speaker', token,
    onLeave: () => stream?.getTracks().forEach((t) => t.stop()),
  });

  const self = { id: client.participantId, name: `${name} (you)`, local: true };
  const tile = grid.ensure(self);
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: true,
      video: { width: { ideal: camWidth || 1280 }, height: { ideal: camHeight || 720 }, frameRate: { ideal: 30 } },
    });
  } catch (err) {
    setStatus(`No camera or microphone: ${err.message}`, 'error');
    return;
  }
  const preview = tile.querySelector('video');
  preview.srcObject = stream;
  tile.dataset.hasVideo = 'true';
  preview.play().catch(() => {});

  const toggles = [
    { button: document.getElementById('toggle-mic'), kind: 'audio', on: 'Mute mic', off: 'Unmute mic' },
    { button: document.getElementById('toggle-cam'), kind: 'video', on: 'Stop camera', off: 'Start camera' },
  ];
  for (const { button, kind, on, off } of toggles) {
    button.addEventListener('click', () => {
      const muted = !client.muted[kind];
      client.setMuted(kind, muted);
      grid.setMuted(client.participantId, kind, muted);
      button.textContent = muted ? off : on;
      button.setAttribute('aria-pressed', String(muted));
    });
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
