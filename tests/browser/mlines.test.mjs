// A long panel in a real browser: speakers come and go while one viewer stays. A speaker who leaves
// (or reconnects, which is a new participant) ends two streams, and the server stops their m-lines
// (port 0) without recycling them (docs/architecture.md, Known limits), so the viewer's SDP grows
// with every speaker it has seen. This checks that the viewer still decodes each new speaker, and
// logs the growth: m-sections, the server's offer and the viewer's answer (limited to 128 KiB; the
// old limit of 32 KiB ran out at the 9th speaker).
// It also proves the bundle tag stays: the first speaker's first m-line carries the viewer's one
// transport, and before the server kept it (inactive) Chromium answered its removal by closing DTLS.
// DAIS_MLINE_CYCLES sets how many speakers come and go (default 9: ten speakers in all).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { BASE, launchBrowser, join as joinIn, waitFor, inbound, fromSpeaker } from './lib.mjs';

const ROOM = `mlines-${process.pid}-${Date.now().toString(36)}`;
const CYCLES = Number(process.env.DAIS_MLINE_CYCLES ?? 9);
/** The server refuses a client SDP larger than this (dais-proto MAX_SDP_BYTES). */
const MAX_SDP_BYTES = 128 * 1024;

let browser;
const pages = [];

before(async () => {
  assert.ok(BASE, 'DAIS_URL is set (scripts/browser-test.sh starts a server)');
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

test(`a viewer decodes every one of ${CYCLES + 1} speakers who come and go`, { timeout: 60_000 + CYCLES * 15_000 }, async () => {
  const viewer = await joinIn(browser, 'viewer', `/watch?room=${ROOM}`);
  pages.push(viewer);
  let last = null;
  for (let i = 0; i <= CYCLES; i += 1) {
    // 640x360: ten speakers' encoders share two cores (Chromium then sends two simulcast layers).
    const speaker = await joinIn(browser, `speaker-${i}`, `/speak?room=${ROOM}&name=S${i}&video=640x360`);
    pages.push(speaker);
    try {
      await waitFor(`the viewer decodes speaker ${i}`, async () => {
        const video = fromSpeaker(await inbound(viewer.page), speaker.id, 'video');
        return video.length === 1 && video[0].framesDecoded > 10 ? video : null;
      });
    } catch (e) {
      console.log(`# viewer, speaker ${i}: ${JSON.stringify(await explain(viewer, speaker))}`);
      throw e;
    }
    const size = await viewer.page.evaluate(() => ({
      sections: (window.dais.pc.remoteDescription?.sdp.match(/^m=/gm) ?? []).length,
      offer: window.dais.pc.remoteDescription?.sdp.length ?? 0,
      answer: window.dais.pc.localDescription?.sdp.length ?? 0,
    }));
    console.log(`# after speaker ${i}: ${size.sections} m-sections, server offer ${size.offer} B, viewer answer ${size.answer} B`);
    assert.ok(size.answer < MAX_SDP_BYTES, `the viewer's answer (${size.answer} B) fits the server's limit`);
    if (last) assert.ok(size.sections > last.sections, 'each speaker adds m-sections (none are recycled yet)');
    // Each consumer m-line offers only its speaker's codec and RTX: with every codec offered, a
    // speaker who came and went cost a viewer's answer about 3.7 KB; with one, about 1.4 KB.
    if (last) {
      const grew = size.answer - last.answer;
      assert.ok(grew < 2500, `one more speaker grew the viewer's answer by ${grew} B (one codec per m-line)`);
    }
    assert.equal(await viewer.page.evaluate(() => window.dais.pc.connectionState), 'connected');
    last = size;
    if (i < CYCLES) {
      await speaker.page.click('#leave');
      await waitFor(`the viewer drops speaker ${i}'s streams`, async () =>
        fromSpeaker(await inbound(viewer.page), speaker.id, 'video').length === 0);
      await speaker.context.close();
    }
  }
  const problems = pages.flatMap((p) => p.problems.map((x) => `${p.label}: ${x}`));
  assert.deepEqual(problems, [], 'no page threw or logged an error');
});

/** What the viewer and a speaker it does not decode show: for a failure's message. */
async function explain(viewer, speaker) {
  const view = await viewer.page.evaluate((id) => {
    const pc = window.dais.pc;
    const sections = [...window.__sdpSections(pc.remoteDescription?.sdp ?? '').entries()]
      .filter(([, s]) => s.participantId === id).map(([mid, s]) => ({ mid, ...s }));
    return { signaling: pc.signalingState, connection: pc.connectionState, sections };
  }, speaker.id).catch((e) => `unreadable: ${e.message}`);
  const entries = (await inbound(viewer.page).catch(() => []))
    .filter((s) => s.participantId === speaker.id)
    .map(({ raw, ...s }) => ({ ...s, keyFramesDecoded: raw.keyFramesDecoded, pliCount: raw.pliCount, firCount: raw.firCount, bytesReceived: raw.bytesReceived }));
  const sent = await speaker.page.evaluate(async () => {
    const pc = window.dais.pc;
    const out = [];
    (await pc.getStats()).forEach((r) => {
      if (r.type === 'outbound-rtp') out.push({ kind: r.kind, rid: r.rid, active: r.active, packetsSent: r.packetsSent, framesEncoded: r.framesEncoded, keyFramesEncoded: r.keyFramesEncoded, pliCount: r.pliCount, width: r.frameWidth, limitation: r.qualityLimitationReason });
    });
    return { connection: pc.connectionState, signaling: pc.signalingState, out };
  }).catch((e) => `unreadable: ${e.message}`);
  const tiles = await viewer.page.evaluate(() => [...document.querySelectorAll('[data-video-paused]')]
    .map((t) => t.dataset.videoPaused)).catch(() => []);
  const headers = { authorization: `Bearer ${process.env.DAIS_ADMIN_KEY}` };
  const room = await fetch(`${BASE}/admin/rooms`, { headers }).then((r) => r.json())
    .then((rooms) => (rooms.rooms ?? rooms).find?.((r) => r.name === ROOM) ?? rooms).catch((e) => `unreadable: ${e.message}`);
  const consumers = await fetch(`${BASE}/metrics`).then((r) => r.text())
    .then((t) => t.split('\n').filter((l) => l.startsWith('dais_video_consumers'))).catch((e) => `unreadable: ${e.message}`);
  return { view, entries, sent, tiles, room, consumers, problems: [...viewer.problems, ...speaker.problems] };
}
