// WHIP and WHEP with a third-party client in real Chromium: the npm package whip-whep (Sergio
// Garcia Murillo's WHIPClient and WHEPClient, as OBS's and Millicast's ecosystem uses them), not
// dais.js. Its pages are served from another origin than the dais server (a small HTTP server
// here, on its own port), so every request also crosses CORS.
//
// 1. A WHIPClient publishes Chromium's fake camera and microphone to /whip/{room}; a /watch viewer
//    (dais.js) decodes its video and receives its audio, and sees it as a speaker by its name.
// 2. A WHEPClient plays /whep/{room}/{participant} of a /speak speaker (dais.js) and decodes its
//    video and audio; stop() deletes the session, and the room forgets the player.
// 3. The plain pages of examples/ (whip-publisher.html into whep-player.html), as an operator runs
//    them: the player decodes what the publisher sends, at the publisher's name.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { BASE, launchBrowser, openPage, join, waitFor, inbound } from './lib.mjs';

const RUN = `${process.pid}-${Date.now().toString(36)}`;
const LIB = new URL('./node_modules/whip-whep/', import.meta.url);
const EXAMPLES = new URL('../../examples/', import.meta.url);

// The third-party pages: each imports the library as an ES module and exposes its client.
const PAGES = {
  '/whip.js': { type: 'text/javascript', body: () => readFileSync(new URL('whip.js', LIB)) },
  '/whep.js': { type: 'text/javascript', body: () => readFileSync(new URL('whep.js', LIB)) },
  '/examples/whip-publisher.html': { type: 'text/html', body: () => readFileSync(new URL('whip-publisher.html', EXAMPLES)) },
  '/examples/whep-player.html': { type: 'text/html', body: () => readFileSync(new URL('whep-player.html', EXAMPLES)) },
  '/favicon.ico': { type: 'image/x-icon', body: () => '' },
  '/publish.html': {
    type: 'text/html',
    body: () => `<!doctype html><title>WHIP</title><video id="v" autoplay muted playsinline></video>
<script type="module">
import { WHIPClient } from '/whip.js';
window.publish = async (url) => {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 360 } });
  const pc = new RTCPeerConnection();
  for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
  window.pc = pc;
  window.client = new WHIPClient();
  await window.client.publish(pc, url);
  return window.client.resourceURL.href;
};
</script>`,
  },
  '/play.html': {
    type: 'text/html',
    body: () => `<!doctype html><title>WHEP</title><video id="v" autoplay muted playsinline></video>
<script type="module">
import { WHEPClient } from '/whep.js';
window.play = async (url) => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.addTransceiver('video', { direction: 'recvonly' });
  const stream = new MediaStream();
  pc.ontrack = (e) => { stream.addTrack(e.track); document.getElementById('v').srcObject = stream; };
  window.pc = pc;
  window.client = new WHEPClient();
  await window.client.view(pc, url);
  return window.client.resourceURL.href;
};
</script>`,
  },
};

let browser;
let site;
let origin;
const pages = [];

before(async () => {
  browser = await launchBrowser();
  site = createServer((req, res) => {
    const page = PAGES[new URL(req.url, 'http://x').pathname];
    if (!page) { res.writeHead(404); res.end(); return; }
    res.writeHead(200, { 'content-type': `${page.type}; charset=utf-8` });
    res.end(page.body());
  });
  await new Promise((r) => site.listen(0, '127.0.0.1', r));
  origin = `http://127.0.0.1:${site.address().port}`;
  assert.notEqual(origin, new URL(BASE).origin, 'the client pages come from another origin');
});

after(async () => {
  for (const p of pages) {
    if (p.problems.length) console.log(`# ${p.label} page problems:\n#   ${p.problems.join('\n#   ')}`);
  }
  await browser?.close();
  site?.close();
});

/** Received video and audio of a plain RTCPeerConnection page (window.pc). */
async function received(page) {
  return page.evaluate(async () => {
    const out = { frames: 0, width: 0, audioPackets: 0 };
    (await window.pc.getStats()).forEach((r) => {
      if (r.type !== 'inbound-rtp') return;
      if (r.kind === 'video') { out.frames += r.framesDecoded ?? 0; out.width = Math.max(out.width, r.frameWidth ?? 0); }
      if (r.kind === 'audio') out.audioPackets += r.packetsReceived ?? 0;
    });
    return out;
  });
}

test('a third-party WHIP client publishes and a /watch viewer decodes it', { timeout: 90_000 }, async () => {
  const room = `whip-${RUN}`;
  const studio = await openPage(browser, 'whip-publisher');
  pages.push(studio);
  const viewer = await join(browser, 'viewer', `/watch?room=${room}`);
  pages.push(viewer);
  try {
    await studio.page.goto(`${origin}/publish.html`);
    const resource = await studio.page.evaluate((url) => window.publish(url), `${BASE}/whip/${room}?name=Studio`);
    assert.match(resource, new RegExp(`/whip/${room}/[0-9a-f]{64}$`), 'the Location names the session');
    await waitFor('the viewer decodes the WHIP video and hears its audio', async () => {
      const stats = await inbound(viewer.page);
      const video = stats.find((s) => s.kind === 'video' && s.active && s.framesDecoded > 30);
      const audio = stats.find((s) => s.kind === 'audio' && s.active && s.packetsReceived > 50);
      return video && audio && video.participantId === audio.participantId;
    }, 45_000);
    const names = await viewer.page.evaluate(() => document.body.innerText);
    assert.match(names, /Studio/, 'the viewer page shows the publisher by its name');
    const sent = await studio.page.evaluate(async () => {
      let bytes = 0;
      (await window.pc.getStats()).forEach((r) => { if (r.type === 'outbound-rtp') bytes += r.bytesSent ?? 0; });
      return bytes;
    });
    assert.ok(sent > 10_000, `the publisher sent ${sent} bytes`);
    // stop() closes the peer connection and DELETEs the resource: the viewer's tiles go.
    await studio.page.evaluate(() => window.client.stop());
    await waitFor('the publisher leaves the viewer page', async () => {
      const stats = await inbound(viewer.page);
      return !stats.some((s) => s.kind === 'video' && s.active);
    });
    const again = await fetch(resource, { method: 'DELETE' });
    assert.equal(again.status, 404, 'the session was deleted by the client');
  } finally {
    await studio.context.close();
    await viewer.context.close();
  }
});

test('a third-party WHEP player plays one speaker of the room', { timeout: 90_000 }, async () => {
  const room = `whep-${RUN}`;
  const speaker = await join(browser, 'speaker', `/speak?room=${room}&name=Ann`);
  pages.push(speaker);
  const player = await openPage(browser, 'whep-player');
  pages.push(player);
  try {
    await player.page.goto(`${origin}/play.html`);
    const resource = await player.page.evaluate((url) => window.play(url), `${BASE}/whep/${room}/Ann`);
    assert.match(resource, new RegExp(`/whep/${room}/Ann/[0-9a-f]{64}$`));
    const got = await waitFor('the player decodes Ann\'s video and receives her audio', async () => {
      const r = await received(player.page);
      return r.frames > 30 && r.width > 0 && r.audioPackets > 50 && r;
    }, 45_000);
    console.log(`# WHEP player: ${got.frames} frames at width ${got.width}, ${got.audioPackets} audio packets`);
    const before = (await received(player.page)).frames;
    await new Promise((r) => setTimeout(r, 2_000));
    const after = (await received(player.page)).frames;
    assert.ok(after > before + 10, `frames keep coming (${before} -> ${after})`);
    await player.page.evaluate(() => window.client.stop());
    await waitFor('the session is gone', async () => (await fetch(resource, { method: 'DELETE' })).status === 404);
  } finally {
    await player.context.close();
    await speaker.context.close();
  }
});

test('the examples/ pages publish over WHIP and play over WHEP', { timeout: 90_000 }, async () => {
  const room = `examples-${RUN}`;
  const studio = await openPage(browser, 'example-publisher');
  pages.push(studio);
  const player = await openPage(browser, 'example-player');
  pages.push(player);
  try {
    const q = `server=${encodeURIComponent(BASE)}&room=${room}`;
    await studio.page.goto(`${origin}/examples/whip-publisher.html?${q}&name=Keynote`);
    await studio.page.evaluate(() => window.publish());
    await player.page.goto(`${origin}/examples/whep-player.html?${q}&participant=Keynote`);
    // The publisher may still be connecting: the player's POST needs it in the room already.
    await player.page.evaluate(() => window.play());
    const got = await waitFor('the example player decodes the example publisher', async () => {
      const r = await received(player.page);
      return r.frames > 30 && r.width > 0 && r.audioPackets > 50 && r;
    }, 45_000);
    console.log(`# examples: ${got.frames} frames at width ${got.width}, ${got.audioPackets} audio packets`);
    await player.page.evaluate(() => window.stopPlaying());
    await studio.page.evaluate(() => window.stopPublishing());
    const resource = await studio.page.evaluate(() => window.resource);
    assert.match(resource, new RegExp(`/whip/${room}/[0-9a-f]{64}$`));
    const gone = await fetch(resource, { method: 'DELETE' });
    assert.equal(gone.status, 404, 'the publisher deleted its session');
  } finally {
    await player.context.close();
    await studio.context.close();
  }
});
