// Landing page: pick a room and a role (and, for speakers, a video codec), then go to /speak or
// /watch.

import { markSendableCodecs } from './ui.js';

const form = document.getElementById('enter');
const nameInput = form.elements.name;
const nameField = document.getElementById('name-field');
const codecField = document.getElementById('codec-field');
markSendableCodecs(form.elements.codec);

function syncRole() {
  const speaker = form.elements.role.value === 'speaker';
  nameInput.required = speaker;
  nameField.querySelector('input').placeholder = speaker ? 'shown on your tile' : 'optional';
  codecField.hidden = !speaker; // viewers receive whatever each speaker sends
}

form.addEventListener('change', syncRole);
form.addEventListener('submit', (e) => {
  e.preventDefault();
  const room = form.elements.room.value.trim();
  const name = nameInput.value.trim();
  const q = new URLSearchParams({ room });
  if (form.elements.role.value === 'speaker') {
    q.set('name', name);
    const codec = form.elements.codec.value;
    if (codec) q.set('codec', codec); // "auto" leaves it out
    location.assign(`/speak?${q}`);
  } else {
    if (name) q.set('name', name);
    location.assign(`/watch?${q}`);
  }
});

const last = new URLSearchParams(location.search).get('room');
if (last) form.elements.room.value = last;
syncRole();
