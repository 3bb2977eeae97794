// Promote and demote in place with real Chromium peers: a viewer on /watch is promoted through the
// admin API (DAIS_ADMIN_KEY, set by scripts/browser-test.sh), publishes its fake camera over the SAME
// WebSocket and peer connection, and the speaker on /speak decodes it; demoted again, its stream is
// unpublished and the speaker's tile for it goes away.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { BASE, launchBrowser, join, waitFor, inbound, fromSpeaker } from './lib.mjs';

const KEY = process.env.DAIS_ADMIN_KEY;
const RUN = `${process.pid}-${Date.now().toString(36)}`;
let browser;
const pages = [];

before(async () => { browser = await launchBrowser(); });
after(async () => {
  for (const p of pages) if (p.problems.length) console.log(`# ${p.label} page problems:\n#   ${p.problems.join('\n#   ')}`);
  await browser?.close();
});

async function admin(method, path, body) {
  const res = await fetch(`${BASE}${path}`, {
    method,
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  return res.status;
}

test('an operator promotes a viewer in place and demotes it again', { timeout: 120_000 }, async () => {
  assert.ok(KEY, 'DAIS_ADMIN_KEY must be set (scripts/browser-test.sh sets it)');
  const room = `admin-${RUN}`;
  const speaker = await join(browser, 'speaker', `/speak?room=${room}&name=S`);
  const viewer = await join(browser, 'viewer', `/watch?room=${room}&name=V`);
  pages.push(speaker, viewer);
  await waitFor('the viewer decodes the speaker', async () =>
    fromSpeaker(await inbound(viewer.page), speaker.id, 'video').some((s) => s.framesDecoded > 10));
  const wsBefore = await viewer.page.evaluate(() => window.dais.participantId);

  assert.equal(await admin('POST', `/admin/rooms/${room}/participants/${viewer.id}/role`, { role: 'speaker' }), 204);
  await waitFor('the speaker decodes the promoted viewer', async () =>
    fromSpeaker(await inbound(speaker.page), viewer.id, 'video').some((s) => s.framesDecoded > 30), 45_000);
  const state = await viewer.page.evaluate(() => ({ id: window.dais.participantId, role: window.dais.role, ws: window.dais.ws?.readyState }));
  assert.equal(state.id, wsBefore, 'same participant, no reconnect');
  assert.equal(state.role, 'speaker');

  assert.equal(await admin('POST', `/admin/rooms/${room}/participants/${viewer.id}/role`, { role: 'viewer' }), 204);
  await waitFor('the demoted viewer\'s stream is gone at the speaker', async () =>
    fromSpeaker(await inbound(speaker.page), viewer.id, 'video').length === 0, 30_000);
  const tiles = await speaker.page.evaluate((id) => document.querySelectorAll(`[data-participant-id="${id}"] video`).length, viewer.id);
  assert.equal(tiles, 0, 'no tile left for the demoted participant');
  await waitFor('the demoted viewer still receives the speaker', async () =>
    fromSpeaker(await inbound(viewer.page), speaker.id, 'video').some((s) => s.framesDecoded > 60));
  for (const p of pages) assert.deepEqual(p.problems, [], `${p.label} page problems`);
});
