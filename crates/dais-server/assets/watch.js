// /watch?room=R[&name=N]: join as a viewer and see and hear every speaker.

import { openRoom, params, showJoinForm } from './ui.js';

const room = params.get('room');
const name = params.get('name') || `viewer-${Math.random().toString(16).slice(2, 6)}`;

if (!room) showJoinForm();
else openRoom({ room, name, role: 'viewer' }).catch(() => {});
