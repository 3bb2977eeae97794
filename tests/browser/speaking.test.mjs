// Active speaker in real browsers: three Chromium speakers on /speak (the fake microphone plays a
// continuous syllable-like tone from a WAV file, so an unmuted speaker really sounds like speech),
// and one viewer on /watch. Two speakers mute with the page's own mic button. Asserted from the
// viewer's page: the `speaking` messages it received (window.dais's `speaking` event) and the
// tiles' data-dominant / data-speaking attributes, which the page's CSS draws as a ring.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, join as joinIn, waitFor, writeToneWav } from './lib.mjs';

const ROOM = `speaking-${process.pid}-${Date.now().toString(36)}`;
const DOMINANT_BUDGET_MS = 2_000;

let browser;
const speakers = [];
let viewer;

before(async () => {
  browser = await launchBrowser({ args: [`--use-file-for-fake-audio-capture=${writeToneWav()}`] });
  for (const name of ['Ann', 'Bo', 'Cy']) {
    speakers.push(await joinIn(browser, `speaker-${name}`, `/speak?room=${ROOM}&name=${name}`));
  }
  viewer = await joinIn(browser, 'viewer', `/watch?room=${ROOM}`);
  await viewer.page.evaluate(() => {
    window.speakingLog = [];
    window.dais.on('speaking', (s) => window.speakingLog.push({ at: performance.now(), ...s }));
  });
});

after(async () => {
  for (const p of [...speakers, viewer].filter(Boolean)) {
    if (p.problems.length) console.log(`# ${p.label} page problems:\n#   ${p.problems.join('\n#   ')}`);
  }
  await browser?.close();
});

const dominantSeen = (page) => page.evaluate(() => window.dais.speaking.dominant);

async function toggleMic(p) {
  await p.page.click('#toggle-mic');
}

/** Wait until the viewer's page names `who` dominant; the milliseconds it took from `since`. */
async function becomesDominant(who, since) {
  await waitFor(`the viewer sees ${who.label} dominant`, async () => (await dominantSeen(viewer.page)) === who.id, 10_000);
  return Date.now() - since;
}

test('the one unmuted speaker becomes dominant within 2 s, and the floor follows a swap', { timeout: 90_000 }, async () => {
  const [ann, bo, cy] = speakers;
  // Everyone talks at first: somebody holds the floor.
  await waitFor('someone is dominant', async () => (await dominantSeen(viewer.page)) !== null);
  // Only Cy stays unmuted (if Cy holds the floor already, first hand it to Ann).
  if ((await dominantSeen(viewer.page)) === cy.id) {
    await toggleMic(bo);
    await toggleMic(cy);
    await becomesDominant(ann, Date.now());
    await toggleMic(bo);
    await toggleMic(cy);
  }
  let t0 = Date.now();
  await toggleMic(ann);
  await toggleMic(bo);
  const first = await becomesDominant(cy, t0);
  console.log(`# ${cy.label} (the one unmuted) dominant ${first} ms after the others muted`);
  assert.ok(first <= DOMINANT_BUDGET_MS, `${cy.label} dominant after ${first} ms; budget ${DOMINANT_BUDGET_MS} ms`);
  await waitFor('the viewer sees only Cy speaking', () => viewer.page.evaluate((id) =>
    JSON.stringify(window.dais.speaking.participants) === JSON.stringify([id]), cy.id));
  // The tile shows it: Cy's tile has the dominant ring, the others do not.
  const marks = await viewer.page.evaluate(() => Object.fromEntries(
    [...document.querySelectorAll('.tile[data-participant-id]')].map((t) => [t.dataset.participantId, t.dataset.dominant])));
  assert.deepEqual(marks, { [ann.id]: 'false', [bo.id]: 'false', [cy.id]: 'true' });

  // The microphones swap: Ann unmutes, Cy mutes.
  t0 = Date.now();
  await toggleMic(ann);
  await toggleMic(cy);
  const swap = await becomesDominant(ann, t0);
  console.log(`# after the swap ${ann.label} dominant in ${swap} ms`);
  assert.ok(swap <= DOMINANT_BUDGET_MS, `${ann.label} dominant ${swap} ms after the swap; budget ${DOMINANT_BUDGET_MS} ms`);

  // Only on change, and at most 4 a second.
  const log = await viewer.page.evaluate(() => window.speakingLog);
  assert.ok(log.length >= 2, JSON.stringify(log));
  for (let i = 1; i < log.length; i++) {
    assert.ok(log[i].at - log[i - 1].at >= 240, `two speaking messages ${log[i].at - log[i - 1].at} ms apart`);
    assert.notDeepEqual([log[i].participants, log[i].dominant], [log[i - 1].participants, log[i - 1].dominant]);
  }
});
