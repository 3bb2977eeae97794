// /watch?room=R[&name=N][&token=T]: join as a viewer and see and hear every speaker. With a join
// token (`dais token`) the room and name default to the token's.

import { openRoom, params, showJoinForm } from './ui.js';
import { tokenClaims } from './dais.js';

const token = params.get('token') || undefined;
const claims = token ? tokenClaims(token) : null;
const room = params.get('room') || claims?.room;
const name = params.get('name') || claims?.name || `viewer-${Math.random().toString(16).slice(2, 6)}`;

if (!room) showJoinForm();
else openRoom({ room, name, role: 'viewer', token }).catch(() => {});
