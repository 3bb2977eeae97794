// A panel in real browsers: two speakers on /speak and two viewers on /watch, each in its own
// browser context of Debian's headless Chromium with fake camera and microphone, against the
// dais server at $DAIS_URL (scripts/browser-test.sh starts one). Everything asserted comes from
// the pages' RTCPeerConnection.getStats() and DOM.
//
// Inbound streams are attributed to speakers through the remote SDP: the inbound-rtp entry's mid
// (or, failing that, its trackIdentifier -> transceiver -> mid) names an m-section whose
// a=msid is "<publisher participant id> <media id>". That is the server's statement, not the
// page's bookkeeping, and it tells the two speakers apart even though both send the same kind of
// fake video.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const BASE = process.env.DAIS_URL;
const MEDIA_ADDR = process.env.DAIS_MEDIA_ADDR; // "127.0.0.1:PORT", when the runner knows it
const EXECUTABLE = process.env.CHROMIUM ?? '/usr/bin/chromium';
const ROOM = `roundtable-${process.pid}-${Date.now().toString(36)}`;
const WAIT_MS = 30_000;
const FIRST_FRAME_BUDGET_MS = 2_000;
const LATE_JOIN_AFTER_MS = 10_000;

// shared/BROWSER-TESTING.md, plus autoplay with sound.
const CHROMIUM_ARGS = [
  '--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection', '--autoplay-policy=no-user-gesture-required',
];

let browser;
let speakersJoinedAt = 0;
const speakers = [];
const viewers = [];
const everyone = () => [...speakers, ...viewers];

before(async () => {
  assert.ok(BASE, 'DAIS_URL must name the server, e.g. http://127.0.0.1:8080 (scripts/browser-test.sh sets it)');
  // headless: false because the flag list above already carries --headless=new; Playwright's own
  // headless mode would add its flags (and --mute-audio) on top.
  browser = await chromium.launch({ executablePath: EXECUTABLE, headless: false, args: CHROMIUM_ARGS });
  speakers.push(await join('speaker-a', `/speak?room=${ROOM}&name=Ann`));
  speakers.push(await join('speaker-b', `/speak?room=${ROOM}&name=Bo`));
  speakersJoinedAt = Date.now();
  viewers.push(await join('viewer-1', `/watch?room=${ROOM}`));
  viewers.push(await join('viewer-2', `/watch?room=${ROOM}`));
});

after(async () => {
  for (const p of everyone()) {
    if (p.problems.length) console.log(`# ${p.label} page problems:\n#   ${p.problems.join('\n#   ')}`);
  }
  await browser?.close();
});

test('each speaker decodes the other speaker\'s video and sends its own', { timeout: 60_000 }, async () => {
  for (const [me, other] of [[speakers[0], speakers[1]], [speakers[1], speakers[0]]]) {
    const video = await waitFor(`${me.label} decodes ${other.label}'s video`, async () => {
      const v = streamsFrom(await inbound(me.page), other.id, 'video');
      return v.length === 1 && v[0].framesDecoded > 60 ? v[0] : null;
    });
    assert.equal(video.participantId, other.id);
    const sent1 = await outboundBytes(me.page);
    await sleep(1_000);
    const sent2 = await outboundBytes(me.page);
    for (const kind of ['audio', 'video']) {
      assert.ok(sent2[kind] > sent1[kind], `${me.label} ${kind} bytesSent grows: ${sent1[kind]} -> ${sent2[kind]}`);
    }
  }
});

test('each viewer decodes every speaker\'s video and receives every speaker\'s audio', { timeout: 90_000 }, async () => {
  for (const viewer of viewers) {
    for (const speaker of speakers) {
      const media = await speakerMedia(viewer.page, speaker.id);
      const video = await waitFor(`${viewer.label} decodes ${speaker.label}'s video`, async () => {
        const v = streamsFrom(await inbound(viewer.page), speaker.id, 'video');
        return v.length === 1 && v[0].framesDecoded > 60 ? v[0] : null;
      });
      assert.equal(video.mediaId, media.video, `msid track id of ${speaker.label}'s video is its media id`);

      const a1 = streamsFrom(await inbound(viewer.page), speaker.id, 'audio');
      assert.equal(a1.length, 1, `${viewer.label} has one audio stream from ${speaker.label}`);
      assert.equal(a1[0].mediaId, media.audio, `msid track id of ${speaker.label}'s audio is its media id`);
      await sleep(1_500);
      const a2 = streamsFrom(await inbound(viewer.page), speaker.id, 'audio');
      assert.ok(a2[0].packetsReceived > a1[0].packetsReceived,
        `${viewer.label} audio packetsReceived from ${speaker.label} grows: ${a1[0].packetsReceived} -> ${a2[0].packetsReceived}`);
    }
  }
});

test('viewer pages show one tile per speaker, playing that speaker\'s media', { timeout: 60_000 }, async () => {
  for (const viewer of viewers) {
    const expected = [];
    for (const s of speakers) {
      const m = await speakerMedia(viewer.page, s.id);
      expected.push({ id: s.id, video: m.video, audio: m.audio });
    }
    expected.sort((a, b) => a.id.localeCompare(b.id));
    const tiles = await waitFor(`${viewer.label} shows tiles for both speakers`, async () => {
      const t = await tilesOf(viewer.page);
      return JSON.stringify(t) === JSON.stringify(expected) ? t : null;
    });
    assert.deepEqual(tiles, expected);
  }
});

test('every peer connection runs on a succeeded candidate pair to the server', { timeout: 60_000 }, async () => {
  for (const p of everyone()) {
    const pair = await waitFor(`${p.label} has a succeeded candidate pair`, async () => {
      const c = await selectedPair(p.page);
      return c?.state === 'succeeded' ? c : null;
    });
    assert.equal(pair.state, 'succeeded');
    assert.equal(pair.remoteAddress, '127.0.0.1', `${p.label} talks to the server on loopback`);
    if (MEDIA_ADDR) assert.equal(`${pair.remoteAddress}:${pair.remotePort}`, MEDIA_ADDR);
  }
});

test('a viewer joining late decodes every speaker within 2 s of joining', { timeout: 60_000 }, async () => {
  await sleep(Math.max(0, speakersJoinedAt + LATE_JOIN_AFTER_MS - Date.now()));
  const late = await openPage('viewer-late');
  viewers.push(late);
  await late.page.goto(`${BASE}/watch?room=${ROOM}`, { waitUntil: 'domcontentloaded' });
  const ids = speakers.map((s) => s.id);
  const r = await late.page.evaluate(firstFrames, { ids, timeoutMs: WAIT_MS });
  late.id = r.participantId;
  for (const s of speakers) {
    const at = r.firstFrame[s.id];
    assert.ok(at !== undefined, `late viewer decoded no frame of ${s.label} within ${WAIT_MS} ms`);
    const sinceJoin = at - r.joinStarted;
    const sinceNavigation = at; // performance.now() counts from the navigation
    console.log(`# late viewer: first frame of ${s.label} ${sinceJoin.toFixed(0)} ms after join(), `
      + `${sinceNavigation.toFixed(0)} ms after navigation`);
    assert.ok(sinceJoin <= FIRST_FRAME_BUDGET_MS,
      `late viewer decodes ${s.label} ${sinceJoin.toFixed(0)} ms after join(); budget ${FIRST_FRAME_BUDGET_MS} ms`);
  }
});

test('muting shows on viewers\' tiles and unmuting clears it', { timeout: 60_000 }, async () => {
  const [ann] = speakers;
  await ann.page.click('#toggle-mic');
  assert.equal(await ann.page.evaluate(() => window.dais.localStream.getAudioTracks()[0].enabled), false);
  for (const v of viewers) {
    await waitFor(`${v.label} shows ${ann.label} muted`, () => tileAttr(v.page, ann.id, 'audioMuted', 'true'));
  }
  await ann.page.click('#toggle-mic');
  for (const v of viewers) {
    await waitFor(`${v.label} shows ${ann.label} unmuted`, () => tileAttr(v.page, ann.id, 'audioMuted', 'false'));
  }
});

test('when a speaker leaves, viewers drop the tile and stop receiving it', { timeout: 60_000 }, async () => {
  const [ann, bo] = speakers;
  await bo.page.click('#leave');
  for (const v of viewers) {
    await waitFor(`${v.label} removes ${bo.label}'s tile`, async () => {
      const ids = (await tilesOf(v.page)).map((t) => t.id);
      return ids.length === 1 && ids[0] === ann.id;
    });
    await waitFor(`${v.label}'s remote description no longer sends ${bo.label}`, async () =>
      (await activeSections(v.page)).every((s) => s.participantId !== bo.id));
  }
  await waitFor(`${ann.label} removes ${bo.label}'s tile`, async () =>
    (await tilesOf(ann.page)).every((t) => t.id !== bo.id));
});

test('no page threw or logged an error', () => {
  for (const p of everyone()) assert.deepEqual(p.problems, [], `${p.label} page problems`);
});

// ---- helpers -------------------------------------------------------------------------------

async function openPage(label) {
  const context = await browser.newContext();
  await context.addInitScript(installSdpParser);
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console.error: ${m.text()}`); });
  return { label, context, page, problems, id: null };
}

async function join(label, path) {
  const p = await openPage(label);
  await p.page.goto(BASE + path);
  await p.page.waitForFunction(() => window.dais?.participantId, null, { timeout: WAIT_MS });
  p.id = await p.page.evaluate(() => window.dais.participantId);
  return p;
}

/** Poll `check` until it returns something truthy; fail with `what` after WAIT_MS. */
async function waitFor(what, check, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  while (Date.now() < deadline) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      lastError = e;
    }
    await sleep(250);
  }
  assert.fail(`timed out after ${timeoutMs} ms waiting until ${what}${lastError ? ` (last error: ${lastError.message})` : ''}`);
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function streamsFrom(stats, participantId, kind) {
  return stats.filter((s) => s.participantId === participantId && s.kind === kind && s.active);
}

/** The media ids a page's roster lists for a speaker, by kind. */
async function speakerMedia(page, participantId) {
  const media = await page.evaluate((id) => window.dais.participants.get(id)?.media ?? [], participantId);
  const byKind = Object.fromEntries(media.map((m) => [m.kind, m.id]));
  assert.ok(byKind.audio && byKind.video, `roster lists audio and video of ${participantId}: ${JSON.stringify(media)}`);
  return byKind;
}

// Installed in every page before its scripts: m-sections of an SDP by mid, with the msid's
// participant and media ids. Kept independent of dais.js on purpose.
function installSdpParser() {
  window.__sdpSections = (sdp) => {
    const out = new Map();
    let cur = null;
    for (const raw of sdp.split(/\r?\n/)) {
      const line = raw.trim();
      if (line.startsWith('m=')) { cur = { port: Number(line.split(' ')[1]), direction: 'sendrecv' }; continue; }
      if (!cur) continue;
      if (line.startsWith('a=mid:')) out.set(line.slice(6), cur);
      else if (/^a=(sendonly|recvonly|sendrecv|inactive)$/.test(line)) cur.direction = line.slice(2);
      else if (line.startsWith('a=msid:')) [cur.participantId, cur.mediaId] = line.slice(7).split(/\s+/);
    }
    for (const s of out.values()) s.active = s.port !== 0 && (s.direction === 'sendonly' || s.direction === 'sendrecv');
    return out;
  };
}

/** inbound-rtp entries of a page, each attributed to a publisher through the remote SDP. */
async function inbound(page) {
  return page.evaluate(async () => {
    const pc = window.dais.pc;
    const sections = window.__sdpSections(pc.remoteDescription?.sdp ?? '');
    const midOfTrack = new Map(pc.getTransceivers().map((t) => [t.receiver.track.id, t.mid]));
    const out = [];
    (await pc.getStats()).forEach((r) => {
      if (r.type !== 'inbound-rtp') return;
      const mid = r.mid ?? midOfTrack.get(r.trackIdentifier);
      const s = sections.get(mid) ?? {};
      out.push({
        kind: r.kind, mid, ssrc: r.ssrc, active: !!s.active,
        participantId: s.participantId ?? null, mediaId: s.mediaId ?? null,
        framesDecoded: r.framesDecoded ?? 0, packetsReceived: r.packetsReceived ?? 0,
      });
    });
    return out;
  });
}

async function activeSections(page) {
  return page.evaluate(() => {
    const sections = window.__sdpSections(window.dais.pc.remoteDescription?.sdp ?? '');
    return [...sections.values()].filter((s) => s.active);
  });
}

async function outboundBytes(page) {
  return page.evaluate(async () => {
    const out = { audio: 0, video: 0 };
    (await window.dais.pc.getStats()).forEach((r) => {
      if (r.type === 'outbound-rtp') out[r.kind] += r.bytesSent ?? 0;
    });
    return out;
  });
}

async function selectedPair(page) {
  return page.evaluate(async () => {
    const stats = await window.dais.pc.getStats();
    let pair = null;
    stats.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
    });
    if (!pair) return null;
    const remote = stats.get(pair.remoteCandidateId) ?? {};
    return { state: pair.state, remoteAddress: remote.address ?? remote.ip, remotePort: remote.port };
  });
}

/** Tiles of a page other than the own preview: participant id and the media ids they play. */
async function tilesOf(page) {
  return page.evaluate(() => [...document.querySelectorAll('.tile[data-participant-id]:not([data-local])')]
    .map((t) => ({
      id: t.dataset.participantId,
      video: t.querySelector('video')?.dataset.mediaId ?? null,
      audio: t.querySelector('audio')?.dataset.mediaId ?? null,
    }))
    .sort((a, b) => a.id.localeCompare(b.id)));
}

async function tileAttr(page, participantId, attr, value) {
  return page.evaluate(({ id, attr, value }) =>
    document.querySelector(`.tile[data-participant-id="${CSS.escape(id)}"]`)?.dataset[attr] === value,
  { id: participantId, attr, value });
}

// Runs in the late viewer's page: poll getStats until every speaker's video has a decoded frame;
// returns performance.now() of the first sighting per speaker and of join().
async function firstFrames({ ids, timeoutMs }) {
  const firstFrame = {};
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline && !ids.every((id) => id in firstFrame)) {
    const pc = window.dais?.pc;
    if (pc?.remoteDescription) {
      const sections = window.__sdpSections(pc.remoteDescription.sdp);
      const midOfTrack = new Map(pc.getTransceivers().map((t) => [t.receiver.track.id, t.mid]));
      const stats = await pc.getStats();
      const now = performance.now();
      stats.forEach((r) => {
        if (r.type !== 'inbound-rtp' || r.kind !== 'video' || !(r.framesDecoded > 0)) return;
        const id = sections.get(r.mid ?? midOfTrack.get(r.trackIdentifier))?.participantId;
        if (id && !(id in firstFrame)) firstFrame[id] = now;
      });
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return { firstFrame, joinStarted: window.dais?.timing.joinStarted, participantId: window.dais?.participantId };
}
