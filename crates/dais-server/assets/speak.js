// /speak?room=R&name=N: join as a speaker, preview the own camera, see and hear the other speakers.

import { openRoom, params, setStatus, showJoinForm } from './ui.js';

const room = params.get('room');
const name = params.get('name');

if (!room || !name) showJoinForm();
else start(room, name).catch(() => {}); // openRoom already shows the failure

async function start(room, name) {
  let stream = null;
  const { client, grid } = await openRoom({
    room, name, role: 'speaker',
    onLeave: () => stream?.getTracks().forEach((t) => t.stop()),
  });

  const self = { id: client.participantId, name: `${name} (you)`, local: true };
  const tile = grid.ensure(self);
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: true,
      video: { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 30 } },
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

  try {
    await client.publish(stream);
  } catch (err) {
    setStatus(`Could not publish: ${err.message}`, 'error');
  }
}
