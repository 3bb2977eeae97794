// /moderate?room=R[&name=N][&token=T][&login=1]: watch room R as a moderator: the stage and the chat as a
// viewer sees them, plus raised hands to promote and speakers to mute, demote or kick, and a delete
// button on each chat message. On a server with join tokens the page needs a token with the moderator
// grant (`dais token --moderator`), or the admin key typed into its form: with the key it mints itself
// a moderator token through the admin API (`POST /admin/rooms/{room}/tokens`) and keeps the key
// nowhere (`login=1` shows that form at once). An open development server grants moderation to the page without either.

import { addModeration, openRoom, params, setStatus, showJoinForm } from './ui.js';
import { tokenClaims } from './dais.js';

const TOKEN_TTL_SECS = 4 * 3600;

/** Trade the admin key for a moderator token for `room`; `undefined` when the server needs none. */
async function mintToken(room, name, key) {
  const res = await fetch(`/admin/rooms/${encodeURIComponent(room)}/tokens`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name, role: 'viewer', moderator: true, ttl_secs: TOKEN_TTL_SECS }),
  });
  const body = await res.json().catch(() => ({}));
  if (res.status === 409 && body.code === 'tokens_disabled') return undefined;
  if (!res.ok) throw new Error(res.status === 401 ? 'wrong admin key' : (body.message ?? `HTTP ${res.status}`));
  return body.token;
}

function moderate(room, name, token) {
  return openRoom({ room, name, role: 'viewer', token, moderator: true }).then(({ client }) => {
    if (!client.moderator) setStatus('This token carries no moderator grant: watching only.', 'error');
    else addModeration(client);
  });
}

/** The form: a room and the admin key. */
function askForKey(message) {
  showJoinForm();
  if (message) setStatus(message, 'error');
  const form = document.getElementById('join-form');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const room = form.elements.room.value;
    const name = form.elements.name.value || 'Moderator';
    const key = form.elements.key.value;
    try {
      const token = key ? await mintToken(room, name, key) : undefined;
      form.elements.key.value = ''; // the key is not kept, not even in the hidden form
      form.hidden = true;
      document.getElementById('grid').hidden = false;
      history.replaceState(null, '', `/moderate?room=${encodeURIComponent(room)}`);
      await moderate(room, name, token);
    } catch (err) {
      setStatus(`Could not log in: ${err.message}`, 'error');
    }
  });
}

const token = params.get('token') || undefined;
const claims = token ? tokenClaims(token) : null;
const room = params.get('room') || claims?.room;
const name = params.get('name') || claims?.name || 'Moderator';

if (!room || params.has('login')) askForKey(params.has('login') ? 'This server needs a moderator token or the admin key.' : undefined);
else {
  moderate(room, name, token).catch((err) => {
    // Without a token on a server that needs one: start afresh with the form for the admin key.
    if (!token && err?.code === 'token_required') {
      window.dais?.close();
      location.replace(`/moderate?room=${encodeURIComponent(room)}&login=1`);
    }
  });
}
