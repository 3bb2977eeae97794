// ui.js: page helpers shared by /speak and /watch: the tile grid, the status line, the
// "click to unmute" affordance, and the wiring from DaisClient events to tiles.
//
// A tile is one speaker: <article class="tile" data-participant-id="p1"> holding a muted <video>
// and a separate <audio> (so video can autoplay while sound waits for a click if the browser
// insists), each with data-media-id of the media it plays.

import { DaisClient, REACTIONS, sendableVideoCodecs } from './dais.js';

/** Create an element: `el('div', {class: 'x', dataset: {a: '1'}}, child, 'text')`. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (v === true) node.setAttribute(k, '');
    else if (v !== false && v != null) node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c != null));
  return node;
}

/** Query parameters of this page. */
export const params = new URLSearchParams(location.search);

/** Show a one-line status; `tone` is 'info', 'ok' or 'error'. */
export function setStatus(text, tone = 'info') {
  const node = document.getElementById('status');
  if (!node) return;
  node.textContent = text;
  node.dataset.tone = tone;
}

/**
 * Plays <audio> elements, and when the browser refuses playback without a user gesture shows one
 * "Click to unmute" button that starts all of them.
 */
export class AudioUnlock {
  constructor(button) {
    this.button = button;
    this.blocked = new Set();
    button.hidden = true;
    button.addEventListener('click', () => {
      const waiting = [...this.blocked];
      this.blocked.clear();
      button.hidden = true;
      for (const audio of waiting) this.play(audio);
    });
  }

  play(media) {
    media.play().catch((err) => {
      if (err.name !== 'NotAllowedError' || !media.isConnected) return;
      this.blocked.add(media);
      this.button.hidden = false;
    });
  }
}

/** Aspect ratio (width / height) of a tile whose video size is not known yet. */
const DEFAULT_ASPECT = 16 / 9;

/**
 * Where tiles go on a stage of `width` x `height` CSS pixels: every tile gets the same height and
 * its own aspect ratio (so a video fills its tile, without bands), rows are as even as possible
 * (longer rows first) and each is centred, and the number of rows is the one that makes the tiles
 * largest. Returns one box `{left, top, width, height}` per aspect, in order.
 * @param {number[]} aspects
 * @param {number} width
 * @param {number} height
 * @param {number} gap
 */
export function arrange(aspects, width, height, gap) {
  const n = aspects.length;
  if (n === 0 || width <= 0 || height <= 0) return [];
  let best = null;
  for (let r = 1; r <= n; r++) {
    const base = Math.floor(n / r);
    const counts = Array.from({ length: r }, (_, i) => base + (i < n % r ? 1 : 0));
    let h = (height - gap * (r - 1)) / r;
    let at = 0;
    for (const c of counts) {
      const sum = aspects.slice(at, at + c).reduce((a, b) => a + b, 0);
      h = Math.min(h, (width - gap * (c - 1)) / sum);
      at += c;
    }
    if (!best || h > best.h + 0.5) best = { h, counts };
  }
  const h = Math.max(0, Math.floor(best.h));
  const boxes = [];
  let top = (height - (h * best.counts.length + gap * (best.counts.length - 1))) / 2;
  let at = 0;
  for (const c of best.counts) {
    const widths = aspects.slice(at, at + c).map((a) => Math.floor(h * a));
    let left = (width - (widths.reduce((a, b) => a + b, 0) + gap * (c - 1))) / 2;
    for (const w of widths) {
      boxes.push({ left: Math.round(left), top: Math.round(top), width: w, height: h });
      left += w + gap;
    }
    top += h + gap;
    at += c;
  }
  return boxes;
}

/** Narrow screens (phones): the stage is as tall as its tiles need, at most this share of the screen. */
const PHONE = '(max-width: 40rem)';
const PHONE_STAGE_SHARE = 0.6;

/**
 * The stage of speaker tiles, laid out by {@link arrange} (at most 9 x 9 steps) whenever tiles come
 * and go, a video's size changes or the stage is resized. A pinned tile (its Pin button, `data-pinned`) takes the
 * stage, with the others in a strip below it; each tile also has a Full screen button.
 */
export class TileGrid {
  /**
   * @param {HTMLElement} container
   * @param {AudioUnlock} audio
   */
  constructor(container, audio) {
    this.container = container;
    this.audio = audio;
    this.tiles = new Map();
    /** The participant whose tile is pinned, if any. */
    this.pinned = null;
    new ResizeObserver(() => this.layout()).observe(container);
    matchMedia(PHONE).addEventListener('change', () => this.layout());
    this._sync();
  }

  /** Pin a participant's tile (or unpin with `null`, or by pinning the pinned one again). */
  pin(id) {
    this.pinned = id === this.pinned ? null : id;
    for (const [tid, tile] of this.tiles) {
      tile.dataset.pinned = String(tid === this.pinned);
      tile.querySelector('.pin')?.setAttribute('aria-pressed', String(tid === this.pinned));
    }
    this.layout();
  }

  /** Lay the tiles out now (it also runs by itself on every change). */
  layout() {
    const c = this.container;
    const style = getComputedStyle(c);
    const gap = parseFloat(style.getPropertyValue('--gap')) || 12;
    const pad = (k) => parseFloat(style[k]) || 0;
    const width = c.clientWidth - pad('paddingLeft') - pad('paddingRight');
    const phone = matchMedia(PHONE).matches;
    const height = phone ? Math.round(innerHeight * PHONE_STAGE_SHARE) : c.clientHeight - pad('paddingTop') - pad('paddingBottom');
    const tiles = [...this.tiles.values()];
    const aspect = (t) => Number(t.dataset.aspect) || DEFAULT_ASPECT;
    const place = (t, b, dx, dy) => Object.assign(t.style, {
      left: `${b.left + dx}px`, top: `${b.top + dy}px`, width: `${b.width}px`, height: `${b.height}px`,
    });
    const x = pad('paddingLeft');
    const y = pad('paddingTop');
    let used = 0;
    const pinned = this.tiles.get(this.pinned);
    // A hidden stage (a pre-join, a join form) has no size: its ResizeObserver lays it out once shown.
    if (width <= 0 || height <= 0) return;
    if (pinned && tiles.length > 1) {
      const others = tiles.filter((t) => t !== pinned);
      const strip = Math.round(Math.min(160, Math.max(72, height * 0.22)));
      const main = arrange([aspect(pinned)], width, height - strip - gap, gap)[0];
      const below = arrange(others.map(aspect), width, strip, gap);
      if (phone) main.top = 0;
      const stripTop = (phone ? main.height : height - strip) + gap;
      place(pinned, main, x, y);
      // One row, made to fit: arrange() of a strip this low puts them side by side.
      others.forEach((t, i) => place(t, { ...below[i], top: below[i].top - below[0].top }, x, y + stripTop));
      used = stripTop + (below[0]?.height ?? 0);
    } else {
      const boxes = arrange(tiles.map(aspect), width, height, gap);
      if (phone && boxes.length) {
        const shift = boxes[0].top;
        for (const b of boxes) b.top -= shift;
      }
      tiles.forEach((t, i) => place(t, boxes[i], x, y));
      used = boxes.length ? Math.max(...boxes.map((b) => b.top + b.height)) : 0;
    }
    // A phone's stage is as tall as its tiles; a desktop's fills what the page leaves it.
    c.style.height = phone && tiles.length ? `${used + y + pad('paddingBottom')}px` : '';
  }

  /** The tile of a participant, created on first use. */
  ensure({ id, name, local = false }) {
    let tile = this.tiles.get(id);
    if (tile) return tile;
    const video = el('video', { autoplay: true, playsinline: true, muted: true });
    video.muted = true; // the attribute alone does not set the property on a created element
    const aspectChanged = () => {
      if (!video.videoWidth || !video.videoHeight) return;
      const a = video.videoWidth / video.videoHeight;
      if (Math.abs(a - (Number(tile.dataset.aspect) || 0)) > 0.01) {
        tile.dataset.aspect = a.toFixed(4);
        this._sync();
      }
    };
    video.addEventListener('resize', aspectChanged);
    video.addEventListener('loadedmetadata', aspectChanged);
    const actions = el('div', { class: 'tile-actions' },
      el('button', { type: 'button', class: 'pin', title: 'Pin to the stage', 'aria-pressed': 'false', onclick: () => this.pin(id) }, 'Pin'),
      el('button', { type: 'button', class: 'fullscreen', title: 'Full screen', onclick: () => tile.requestFullscreen?.().catch(() => {}) }, 'Full screen'));
    tile = el('article', { class: 'tile', dataset: { participantId: id, audioMuted: 'false', videoMuted: 'false', hasVideo: 'false', videoPaused: 'false', pinned: 'false' } },
      video,
      el('div', { class: 'avatar', 'aria-hidden': 'true' }, initials(name)),
      el('div', { class: 'paused', role: 'status' }, 'Video paused: your connection is too slow. Audio continues.'),
      el('footer', { class: 'label' },
        el('span', { class: 'name' }, name),
        el('span', { class: 'badge mic', title: 'microphone muted' }, 'mic off'),
        el('span', { class: 'badge cam', title: 'camera off' }, 'cam off')),
      actions);
    tile.addEventListener('dblclick', () => this.pin(id));
    if (local) tile.dataset.local = 'true';
    else tile.append(el('audio', { autoplay: true }));
    this.tiles.set(id, tile);
    if (local) this.container.prepend(tile);
    else this.container.append(tile);
    this._sync();
    return tile;
  }

  /** Remove a participant's tile and stop its playback. */
  remove(id) {
    const tile = this.tiles.get(id);
    if (!tile) return;
    for (const media of tile.querySelectorAll('video, audio')) media.srcObject = null;
    tile.remove();
    this.tiles.delete(id);
    if (this.pinned === id) this.pinned = null;
    this._sync();
  }

  /** Remove every tile. */
  clear() {
    for (const id of [...this.tiles.keys()]) this.remove(id);
  }

  /** Play a track in a participant's tile. */
  attach(participant, { mediaId, kind, track }) {
    const tile = this.ensure(participant);
    const media = tile.querySelector(kind === 'video' ? 'video' : 'audio');
    if (!media) return;
    media.dataset.mediaId = mediaId;
    media.srcObject = new MediaStream([track]);
    if (kind === 'video') {
      tile.dataset.hasVideo = 'true';
      media.play().catch(() => {});
    } else {
      this.audio.play(media);
    }
  }

  /** Stop playing a media in whichever tile plays it. */
  detach(mediaId) {
    for (const tile of this.tiles.values()) {
      for (const media of tile.querySelectorAll(`[data-media-id="${CSS.escape(mediaId)}"]`)) {
        media.srcObject = null;
        delete media.dataset.mediaId;
        if (media.localName === 'video') tile.dataset.hasVideo = 'false';
      }
    }
  }

  /** Show or hide the notice that the server paused a video (the viewer's link is too slow). */
  setVideoPaused(mediaId, paused) {
    for (const tile of this.tiles.values()) {
      if (tile.querySelector(`video[data-media-id="${CSS.escape(mediaId)}"]`)) tile.dataset.videoPaused = String(paused);
    }
  }

  /** Show or hide a tile's mute badge. */
  setMuted(id, kind, muted) {
    const tile = this.tiles.get(id);
    if (tile) tile.dataset[kind === 'audio' ? 'audioMuted' : 'videoMuted'] = String(muted);
  }

  /**
   * Mark who speaks (`data-speaking`) and who holds the floor (`data-dominant`), from the server's
   * `speaking` message; tiles added later are marked by the next one.
   */
  setSpeaking(participants, dominant) {
    const speaking = new Set(participants);
    for (const [id, tile] of this.tiles) {
      tile.dataset.speaking = String(speaking.has(id));
      tile.dataset.dominant = String(id === dominant);
    }
  }

  // At once, not at the next frame: a new tile must have its size before its video is observed
  // (observeVideoSize reports at once, and 0x0 would pause that video as hidden).
  _sync() {
    this.container.dataset.count = String(this.tiles.size);
    this.layout();
  }
}

/**
 * Keep a grid in step with a client: one tile per speaker other than the client itself, tracks
 * attached as they arrive, mute badges from the roster. `onAudience` hears the number of viewers (the
 * server's count: viewers do not see each other in the roster).
 * @param {import('./dais.js').DaisClient} client
 * @param {TileGrid} grid
 * @param {(viewers: number) => void} [onAudience]
 */
export function bindRoom(client, grid, onAudience = () => {}) {
  const showSpeaker = (p) => {
    if (p.role !== 'speaker' || p.id === client.participantId) return;
    grid.ensure(p);
    for (const m of p.media) grid.setMuted(p.id, m.kind, m.muted);
    // Tracks can be bound before the roster names their owner; play them now.
    for (const m of client.remoteMedia.values()) {
      if (m.participantId !== p.id) continue;
      grid.attach(p, m);
      watchSize(m);
    }
  };
  client.on('joined', ({ participants, viewers }) => {
    participants.forEach(showSpeaker);
    onAudience(viewers);
  });
  client.on('audience', ({ viewers }) => onAudience(viewers));
  client.on('speaking', ({ participants, dominant }) => grid.setSpeaking(participants, dominant));
  client.on('participantjoined', ({ participant }) => showSpeaker(participant));
  client.on('participantleft', ({ participantId }) => grid.remove(participantId));
  client.on('rolechanged', ({ participantId }) => {
    // Promoted people get a tile, demoted ones lose it; the roster already holds the new role.
    const p = client.participants.get(participantId);
    if (p?.role === 'speaker') showSpeaker(p);
    else grid.remove(participantId);
  });
  client.on('mediapublished', ({ participantId, media }) => grid.setMuted(participantId, media.kind, media.muted));
  client.on('mediaunpublished', ({ mediaId }) => grid.detach(mediaId));
  client.on('mutechanged', ({ participantId, kind, muted }) => grid.setMuted(participantId, kind, muted));
  // Each shown video tells the server its size, so that it gets no larger a layer than it shows.
  const sizeWatch = new Map();
  const watchSize = (m) => {
    if (m.kind !== 'video' || sizeWatch.has(m.mediaId)) return;
    const video = grid.tiles.get(m.participantId)?.querySelector(`video[data-media-id="${CSS.escape(m.mediaId)}"]`);
    if (video) sizeWatch.set(m.mediaId, client.observeVideoSize(m.mediaId, video));
  };
  const unwatchSize = (mediaId) => {
    sizeWatch.get(mediaId)?.();
    sizeWatch.delete(mediaId);
  };
  const attachKnown = (m) => {
    const p = client.participants.get(m.participantId);
    if (!p || p.role !== 'speaker') return;
    grid.attach(p, m);
    watchSize(m);
  };
  client.on('track', attachKnown);
  client.on('trackremoved', ({ mediaId }) => {
    unwatchSize(mediaId);
    grid.detach(mediaId);
  });
  client.on('videopaused', ({ mediaId, reason }) => {
    if (reason === 'bandwidth') grid.setVideoPaused(mediaId, true);
  });
  client.on('videoresumed', ({ mediaId }) => grid.setVideoPaused(mediaId, false));
}

function initials(name) {
  const words = String(name).trim().split(/\s+/).filter(Boolean);
  return words.slice(0, 2).map((w) => [...w][0].toUpperCase()).join('') || '?';
}

/**
 * Join a room for a page: creates the client (also `window.dais`, for tests and the console),
 * the grid, the header and the Leave button. Resolves once joined; shows and rethrows a failure.
 * @param {{room: string, name: string, role: 'speaker'|'viewer', onLeave?: () => void}} options
 */
export async function openRoom({ room, name, role, token, moderator = false, onLeave = () => {} }) {
  const client = new DaisClient({ room, name, role, token, moderator });
  window.dais = client;
  const grid = new TileGrid(document.getElementById('grid'), new AudioUnlock(document.getElementById('unmute')));
  const audience = document.getElementById('audience');
  bindRoom(client, grid, (n) => { audience.textContent = `${n} watching`; });
  document.getElementById('room-name').textContent = room;
  document.title = `${room} · Dais`;

  let leaving = false;
  client.on('connectionstatechange', ({ state }) => {
    if (state === 'connected') setStatus('Live', 'ok');
    else if (state === 'failed') setStatus('Media connection failed', 'error');
    else if (state === 'disconnected') setStatus('Media connection interrupted…', 'error');
  });
  // Refused chat messages, reactions and hand changes are their own controls' business.
  client.on('error', ({ error }) => {
    if (!['chat', 'react', 'raise_hand', 'ask', 'upvote', 'answer_question'].includes(error.request)) setStatus(`Error: ${error.message}`, 'error');
  });
  client.on('rolechanged', async ({ role, self }) => {
    if (!self) return;
    if (role === 'viewer') {
      setStatus('An operator moved you to the audience.', 'info');
      return;
    }
    setStatus('An operator invited you on stage: starting camera and microphone…', 'ok');
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: { ideal: 1280 }, height: { ideal: 720 } } });
      await client.publish(stream);
      setStatus('You are on stage.', 'ok');
    } catch (err) {
      setStatus(`Could not go on stage: ${err.message}`, 'error');
    }
  });
  client.on('draining', ({ withinMs }) => {
    setStatus(`The server is restarting within ${Math.round(withinMs / 1000)} s; this page will reconnect by itself.`, 'info');
  });
  client.on('reconnecting', () => setStatus('Reconnecting…', 'error'));
  client.on('reconnected', ({ resumed }) => {
    setStatus(resumed ? 'Reconnected' : 'Reconnected (joined again)', 'ok');
  });
  client.on('close', ({ reason }) => {
    if (!leaving) setStatus(`Disconnected from the server${reason ? `: ${reason}` : ''}`, 'error');
  });
  window.addEventListener('pagehide', () => client.close());

  const controls = document.getElementById('controls');
  document.getElementById('leave').addEventListener('click', async () => {
    leaving = true;
    await client.leave();
    grid.clear();
    audience.textContent = '';
    onLeave();
    controls.replaceChildren(el('a', { class: 'button', href: location.href }, 'Rejoin'));
    setStatus('You left the room.');
  });

  setStatus('Joining…');
  try {
    await client.join();
  } catch (err) {
    setStatus(`Could not join: ${err.message}`, 'error');
    throw err;
  }
  controls.hidden = false;
  showTitle(client);
  addNotices(client);
  const unmute = document.getElementById('unmute');
  if (unmute) controls.prepend(unmute);
  addReactions(client, controls);
  addHand(client, controls);
  const side = addSidePanel();
  addChat(client, side.chat);
  addQuestions(client, side.questions, side.badge);
  // A viewer of an empty stage has no media to connect: say so, until someone publishes.
  const onStage = () => [...client.participants.values()].some((p) => p.media?.length);
  const connecting = () => { if (client.pc?.connectionState !== 'connected') setStatus('Connecting media…'); };
  if (client.role === 'viewer' && !onStage()) setStatus('Joined: no one is on stage yet', 'ok');
  else connecting();
  client.on('mediapublished', connecting);
  return { client, grid };
}

/** A function that shows a text in `node` for `ms`, replacing what it showed. */
function flasher(node, ms = 5_000) {
  let clear = 0;
  return (text) => {
    node.textContent = text;
    clearTimeout(clear);
    clear = setTimeout(() => { node.textContent = ''; }, ms);
  };
}

/** The event's title in the header (`#room-name`, the room's name as its tooltip) and the tab. */
function showTitle(client) {
  const node = document.getElementById('room-name');
  const show = () => {
    node.textContent = client.title ?? client.room;
    node.title = client.title ? `room ${client.room}` : '';
    document.title = `${client.title ?? client.room} · Dais`;
  };
  client.on('roomtitle', show);
  show();
}

/** How long a join or leave notice stays up. */
const NOTICE_MS = 6_000;

/**
 * Join and leave notices in the header (`#notice`, never over the stage): who came on stage, left
 * it or left the room. Viewers coming and going are the audience count's business, and nothing is
 * announced while reconnecting (the roster is being rebuilt then, not changing).
 */
function addNotices(client) {
  const notice = el('span', { id: 'notice', class: 'notice', role: 'status', 'aria-live': 'polite' });
  document.getElementById('audience')?.after(notice);
  const flash = flasher(notice, NOTICE_MS);
  let reconnecting = false;
  const say = (text) => { if (!reconnecting) flash(text); };
  client.on('reconnecting', () => { reconnecting = true; });
  client.on('reconnected', () => { reconnecting = false; });
  client.on('participantjoined', ({ participant }) => {
    if (participant.role === 'speaker') say(`${participant.name} joined the stage`);
  });
  client.on('participantleft', ({ participant }) => {
    if (participant?.role === 'speaker') say(`${participant.name} left`);
  });
  client.on('rolechanged', ({ participantId, role, self }) => {
    if (self) return;
    const p = client.participants.get(participantId);
    if (p) say(role === 'speaker' ? `${p.name} is on stage` : `${p.name} left the stage`);
  });
}

const REACTION_ICONS = {
  applause: '\u{1F44F}', heart: '\u{2764}\u{FE0F}', laugh: '\u{1F602}', thumbs_up: '\u{1F44D}', wow: '\u{1F62E}', celebrate: '\u{1F389}',
};

/**
 * A reaction button per reaction in the controls, and beside them the room's reactions of each
 * interval for two seconds (`#reactions-feed`, one chip per reaction with its count). Both live in
 * the controls bar, so they never cover a tile or a name.
 */
function addReactions(client, controls) {
  const bar = el('div', { class: 'reactions', role: 'group', 'aria-label': 'reactions' });
  for (const r of REACTIONS) {
    const b = el('button', { type: 'button', class: 'reaction', dataset: { reaction: r }, title: r.replace('_', ' ') }, REACTION_ICONS[r]);
    b.addEventListener('click', () => client.react(r));
    bar.append(b);
  }
  controls.prepend(bar);
  const feed = el('div', { id: 'reactions-feed', class: 'reactions-feed', 'aria-live': 'polite' });
  bar.after(feed);
  let clear = 0;
  client.on('reactions', ({ counts }) => {
    feed.replaceChildren(...REACTIONS.filter((r) => counts[r]).map((r) =>
      el('span', { class: 'chip', dataset: { reaction: r } }, `${REACTION_ICONS[r]} ${counts[r]}`)));
    clearTimeout(clear);
    clear = setTimeout(() => feed.replaceChildren(), 2_000);
  });
}

/**
 * A viewer's "Raise hand" toggle in the controls (`#raise-hand`, `aria-pressed`): speakers and
 * moderators see the room's raised hands. It follows the server's `hand` (a moderator may lower it),
 * and is hidden while this participant is a speaker.
 */
function addHand(client, controls) {
  const button = el('button', { id: 'raise-hand', type: 'button', 'aria-pressed': 'false' }, '\u{270B} Raise hand');
  const show = () => {
    button.hidden = client.role !== 'viewer' || client.moderator;
    button.setAttribute('aria-pressed', String(client.handRaised));
    button.textContent = client.handRaised ? '\u{270B} Lower hand' : '\u{270B} Raise hand';
  };
  button.addEventListener('click', () => client.raiseHand(!client.handRaised));
  client.on('hand', () => { button.title = ''; show(); });
  client.on('error', ({ error }) => { if (error.request === 'raise_hand') button.title = error.message; });
  client.on('rolechanged', ({ self }) => { if (self) show(); });
  controls.querySelector('#leave')?.before(button);
  show();
}

/**
 * The moderator's panel beside the stage (`#moderation`): raised hands (`#hands`, each `<li
 * data-participant-id>` with Promote and Lower), and who is on stage (`#on-stage`, each with Mute,
 * Demote and Kick). Every button is a `moderate` message; the server's news redraws the lists.
 */
export function addModeration(client) {
  const hands = el('ol', { id: 'hands', class: 'mod-list', 'aria-label': 'raised hands' });
  const onStage = el('ol', { id: 'on-stage', class: 'mod-list', 'aria-label': 'speakers' });
  const panel = el('aside', { id: 'moderation', class: 'moderation', 'aria-label': 'moderation' },
    el('h2', {}, 'Raised hands'), hands, el('h2', {}, 'On stage'), onStage);
  document.querySelector('.stage')?.append(panel);
  const act = (label, action, target) => el('button', { type: 'button', dataset: { action }, onclick: () => client.moderate(action, target) }, label);
  const drawHands = () => {
    hands.replaceChildren(...client.hands.map((h) => el('li', { dataset: { participantId: h.participantId } },
      el('span', { class: 'who' }, h.name), ' ',
      act('Promote', 'promote', { participant: h.participantId }),
      act('Lower', 'lower_hand', { participant: h.participantId }))));
    if (client.hands.length === 0) hands.append(el('li', { class: 'none' }, 'No raised hands'));
  };
  const drawStage = () => {
    const speakers = [...client.participants.values()].filter((p) => p.role === 'speaker');
    onStage.replaceChildren(...speakers.map((p) => el('li', { dataset: { participantId: p.id } },
      el('span', { class: 'who' }, p.name), ' ',
      act('Mute', 'mute', { participant: p.id, kind: 'audio', muted: true }),
      act('Demote', 'demote', { participant: p.id }),
      act('Kick', 'kick', { participant: p.id }))));
    if (speakers.length === 0) onStage.append(el('li', { class: 'none' }, 'Nobody on stage'));
  };
  client.on('hands', drawHands);
  for (const ev of ['joined', 'participantjoined', 'participantleft', 'rolechanged', 'reconnected']) client.on(ev, drawStage);
  client.on('error', ({ error }) => { if (error.request === 'moderate') setStatus(`Moderation: ${error.message}`, 'error'); });
  drawHands();
  drawStage();
  return panel;
}

/** What the chat panel says when the server refuses a message. */
const CHAT_REFUSALS = {
  invalid_chat: 'Messages are 1 to 500 bytes of text.',
  too_many_chats: 'Slow down: one message every 2 seconds.',
  chat_silenced: 'An organiser has silenced your chat.',
  chat_disabled: 'Chat is off for the audience.',
};

/**
 * The panel beside the stage (below it on a phone), with two tabs: Chat (`#tab-chat`, the pane
 * `#chat`) and Questions (`#tab-questions`, the pane `#questions`, with a count of open questions
 * in `#questions-count`). Chat shows first.
 */
function addSidePanel() {
  const grid = document.getElementById('grid');
  const chat = el('section', { id: 'chat', class: 'pane chat', role: 'tabpanel', 'aria-labelledby': 'tab-chat' });
  const questions = el('section', { id: 'questions', class: 'pane questions', role: 'tabpanel', 'aria-labelledby': 'tab-questions', hidden: '' });
  const badge = el('span', { id: 'questions-count', class: 'count' });
  const tab = (id, pane, ...label) => el('button', { id, type: 'button', role: 'tab', 'aria-controls': pane.id, 'aria-selected': String(!pane.hidden) }, ...label);
  const tabs = [tab('tab-chat', chat, 'Chat'), tab('tab-questions', questions, 'Questions ', badge)];
  const panes = [chat, questions];
  tabs.forEach((t, i) => t.addEventListener('click', () => {
    tabs.forEach((u, j) => u.setAttribute('aria-selected', String(i === j)));
    panes.forEach((p, j) => { p.hidden = i !== j; });
  }));
  const side = el('aside', { id: 'side', class: 'side', 'aria-label': 'chat and questions' },
    el('div', { class: 'tabs', role: 'tablist' }, ...tabs), chat, questions);
  const stage = el('div', { class: 'stage' });
  grid.replaceWith(stage);
  stage.append(grid, side);
  return { chat, questions, badge };
}

/**
 * The room's chat in `pane`: the log (`#chat-log`, one `<li data-chat-id>` per message, text
 * only, never HTML), a form (`#chat-form`, `#chat-input`), and a line for refusals
 * (`#chat-error`). It renders the client's chat state first (its history may have arrived before
 * this panel existed), then follows the chat events.
 */
function addChat(client, pane) {
  const log = el('ol', { id: 'chat-log', class: 'chat-log', 'aria-live': 'polite', 'aria-label': 'chat messages' });
  const input = el('input', { id: 'chat-input', name: 'text', autocomplete: 'off', maxlength: '500', placeholder: 'Say something…', 'aria-label': 'chat message' });
  const send = el('button', { type: 'submit' }, 'Send');
  const form = el('form', { id: 'chat-form', class: 'chat-form' }, input, send);
  const error = el('p', { id: 'chat-error', class: 'chat-error', role: 'status' });
  pane.append(log, error, form);

  // A moderator gets a delete button on each line.
  const line = (m) => el('li', { dataset: { chatId: String(m.id), role: m.role } },
    el('span', { class: 'who' }, m.name), ' ', el('span', { class: 'text' }, m.text),
    client.moderator ? el('button', { type: 'button', class: 'delete', title: 'Delete for everyone', onclick: () => client.moderate('delete_chat', { message: m.id }) }, '×') : null);
  const atBottom = () => log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  const render = () => {
    log.replaceChildren(...client.chat.messages.map(line));
    log.scrollTop = log.scrollHeight;
  };
  const policy = () => {
    const off = client.role !== 'speaker' && !client.chat.viewerChat;
    input.disabled = off;
    send.disabled = off;
    input.placeholder = off ? 'Chat is off for the audience' : 'Say something…';
  };
  const say = flasher(error);
  client.on('chathistory', () => { render(); policy(); });
  client.on('chat', (m) => {
    const follow = atBottom();
    log.append(line(m));
    while (log.children.length > 200) log.firstElementChild.remove();
    if (follow) log.scrollTop = log.scrollHeight;
  });
  client.on('chatdeleted', ({ id }) => log.querySelector(`li[data-chat-id="${id}"]`)?.remove());
  client.on('chatpolicy', policy);
  client.on('rolechanged', ({ self }) => { if (self) policy(); });
  client.on('error', ({ error: e }) => { if (e.request === 'chat') say(CHAT_REFUSALS[e.code] ?? e.message); });
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    if (new TextEncoder().encode(text).length > 500) { say(CHAT_REFUSALS.invalid_chat); return; }
    if (client.sendChat(text)) input.value = '';
    else say('Reconnecting; try again in a moment.');
  });
  render();
  policy();
}

/** What the questions pane says when the server refuses. */
const QUESTION_REFUSALS = {
  invalid_question: 'Questions are 1 to 300 bytes of text.',
  too_many_questions: 'One question every 10 seconds, please.',
  questions_full: 'The room has 100 open questions; try again once some are answered.',
  unknown_question: 'That question is no longer open.',
  too_many_votes: 'Slow down: at most 2 votes a second.',
  chat_silenced: 'An organiser has silenced your chat and questions.',
};

/**
 * The room's questions in `pane`: the open ones ranked by votes (`#questions-list`, one `<li
 * data-question-id>` each, with an upvote toggle `.upvote` showing the votes, `aria-pressed` once
 * voted), how many more are open than shown, the latest answered ones (`#answered-list`), and a
 * form to ask (`#ask-form`, `#ask-input`, refusals in `#ask-error`). Speakers and moderators get
 * an Answered button (`.answer`) on each open question, moderators a delete button (`.delete`).
 * `badge` shows how many questions are open.
 */
function addQuestions(client, pane, badge) {
  const list = el('ol', { id: 'questions-list', class: 'questions-list', 'aria-label': 'open questions' });
  const more = el('p', { id: 'questions-more', class: 'muted' });
  const answered = el('ol', { id: 'answered-list', class: 'questions-list answered', 'aria-label': 'answered questions' });
  const answeredHead = el('h3', {}, 'Answered');
  const input = el('input', { id: 'ask-input', name: 'text', autocomplete: 'off', maxlength: '300', placeholder: 'Ask the speakers…', 'aria-label': 'your question' });
  const form = el('form', { id: 'ask-form', class: 'chat-form' }, input, el('button', { type: 'submit' }, 'Ask'));
  const error = el('p', { id: 'ask-error', class: 'chat-error', role: 'status' });
  pane.append(list, more, answeredHead, answered, error, form);

  const backstage = () => client.role === 'speaker' || client.moderator;
  const button = (cls, label, title, onclick, extra = {}) => el('button', { type: 'button', class: cls, title, onclick, ...extra }, label);
  const item = (q, open) => {
    const voted = client.voted.has(q.id);
    return el('li', { dataset: { questionId: String(q.id), votes: String(q.votes) } },
      open
        ? button('upvote', `\u{25B2} ${q.votes}`, voted ? 'Take your vote back' : 'Upvote',
          () => { client.upvote(q.id, client.voted.has(q.id)); render(); }, { 'aria-pressed': String(voted) })
        : null,
      el('span', { class: 'text' }, q.text), ' ', el('span', { class: 'who' }, `\u{2014} ${q.name}`),
      open && backstage() ? button('answer', 'Answered', 'Mark answered', () => client.answerQuestion(q.id)) : null,
      client.moderator ? button('delete', '×', 'Delete for everyone', () => client.moderate('delete_question', { question: q.id })) : null);
  };
  function render() {
    const { open, openCount, answered: done } = client.questions;
    list.replaceChildren(...open.map((q) => item(q, true)));
    if (open.length === 0) list.append(el('li', { class: 'none' }, 'No open questions yet'));
    more.textContent = openCount > open.length ? `${openCount - open.length} more open questions` : '';
    answered.replaceChildren(...done.map((q) => item(q, false)));
    answeredHead.hidden = done.length === 0;
    badge.textContent = openCount ? String(openCount) : '';
  }
  const say = flasher(error);
  client.on('questions', render);
  client.on('rolechanged', ({ self }) => { if (self) render(); });
  client.on('asked', () => say('Your question was sent.'));
  client.on('error', ({ error: e }) => {
    if (['ask', 'upvote', 'answer_question'].includes(e.request)) say(QUESTION_REFUSALS[e.code] ?? e.message);
  });
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    if (new TextEncoder().encode(text).length > 300) { say(QUESTION_REFUSALS.invalid_question); return; }
    if (client.ask(text)) input.value = '';
    else say('Reconnecting; try again in a moment.');
  });
  render();
}

/**
 * Mark the options of a video codec <select> (values '' for auto, 'vp8', 'h264', ...) that this
 * browser cannot send as disabled, and fall back to auto if such an option was selected.
 * @param {HTMLSelectElement} select
 */
export function markSendableCodecs(select) {
  const sendable = sendableVideoCodecs();
  if (sendable.length === 0) return; // the browser does not say; let publish() report it
  for (const option of select.options) {
    if (!option.value) continue;
    option.disabled = !sendable.includes(option.value);
    if (option.disabled) option.textContent += ' (not supported here)';
  }
  if (select.selectedOptions[0]?.disabled) select.value = '';
}

/** Show the page's join form, prefilled from the query; submitting reloads with the fields as query. */
export function showJoinForm() {
  const form = document.getElementById('join-form');
  for (const input of form.querySelectorAll('input[name]')) input.value = params.get(input.name) ?? '';
  for (const select of form.querySelectorAll('select[name]')) {
    const wanted = (params.get(select.name) ?? '').toLowerCase();
    select.value = [...select.options].some((o) => o.value === wanted) ? wanted : '';
    if (select.name === 'codec') markSendableCodecs(select);
    // A choice made in the URL stays in sight; the default stays folded away under "Advanced".
    if (select.value) select.closest('details')?.setAttribute('open', '');
  }
  form.hidden = false;
  document.getElementById('grid').hidden = true;
  [...form.querySelectorAll('input')].find((i) => !i.value)?.focus();
}
