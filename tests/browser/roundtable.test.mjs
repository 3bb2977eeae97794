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
import {
  BASE, MEDIA_ADDR, WAIT_MS, launchBrowser, openPage as openPageIn, join as joinIn, waitFor, sleep,
  inbound, outboundBytes, selectedPair, assertSenderReports,
} from './lib.mjs';

const ROOM = `roundtable-${process.pid}-${Date.now().toString(36)}`;
const FIRST_FRAME_BUDGET_MS = 2_000;
const LATE_JOIN_AFTER_MS = 10_000;

let browser;
let speakersJoinedAt = 0;
const speakers = [];
const viewers = [];
const everyone = () => [...speakers, ...viewers];

before(async () => {
  browser = await launchBrowser();
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

// Each consumer leg gets its own RTCP sender reports from the server (NTP time of the speaker's
// capture clock against the leg's RTP timestamps): without them a browser cannot line up a
// speaker's audio with its video. Chromium turns them into remote-outbound-rtp stats.
test('every viewer gets sender reports for each speaker\'s audio and video', { timeout: 60_000 }, async () => {
  const summaries = await Promise.all(viewers.map((viewer) => assertSenderReports(viewer, speakers)));
  viewers.forEach((viewer, i) => console.log(`# ${viewer.label} sender reports:\n#   ${summaries[i].join('\n#   ')}`));
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

test('every page shows the viewer count; viewers list only speakers, speakers list everyone', { timeout: 60_000 }, async () => {
  const viewerIds = viewers.map((v) => v.id).sort();
  for (const p of everyone()) {
    const shown = await waitFor(`${p.label} shows "2 watching"`, async () => {
      const text = await p.page.evaluate(() => document.getElementById('audience')?.textContent ?? '');
      return text === '2 watching' ? text : null;
    });
    assert.equal(shown, '2 watching');
    const roster = await p.page.evaluate(() => [...window.dais.participants.values()].map((x) => ({ id: x.id, role: x.role })));
    const listedViewers = roster.filter((x) => x.role === 'viewer').map((x) => x.id).sort();
    const listedSpeakers = roster.filter((x) => x.role === 'speaker').map((x) => x.id);
    assert.deepEqual(listedSpeakers.sort(), speakers.map((s) => s.id).filter((id) => id !== p.id).sort(),
      `${p.label} lists every other speaker`);
    if (speakers.includes(p)) assert.deepEqual(listedViewers, viewerIds, `${p.label} (a speaker) lists the viewers`);
    else assert.deepEqual(listedViewers, [], `${p.label} (a viewer) lists no other viewer`);
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

const openPage = (label) => openPageIn(browser, label);
const join = (label, path) => joinIn(browser, label, path);

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

async function activeSections(page) {
  return page.evaluate(() => {
    const sections = window.__sdpSections(window.dais.pc.remoteDescription?.sdp ?? '');
    return [...sections.values()].filter((s) => s.active);
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
