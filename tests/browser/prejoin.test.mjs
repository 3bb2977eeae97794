// A speaker's pre-join in a real page: /speak shows a preview of the camera, a choice of camera and
// microphone and a live microphone level before anything is sent; nobody in the room sees the
// speaker yet. Muting the microphone there silences the meter, and the speaker goes on stage with
// it muted: a viewer decodes the camera and shows the tile's "mic off" badge; unmuting on stage
// clears it.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { BASE, launchBrowser, join as joinIn, openPage, waitFor, sleep, writeToneWav } from './lib.mjs';

const ROOM = `prejoin-${process.pid}-${Date.now().toString(36)}`;

let browser;
const pages = [];

before(async () => {
  // A steady tone: the default fake microphone only beeps once a second.
  browser = await launchBrowser({ args: [`--use-file-for-fake-audio-capture=${writeToneWav()}`] });
});

after(async () => {
  for (const p of pages) if (p.problems.length) console.log(`# ${p.label} page problems:\n#   ${p.problems.join('\n#   ')}`);
  await browser?.close();
});

/** The highest level the meter shows over `ms`. */
async function peakLevel(page, ms) {
  let peak = 0;
  const until = Date.now() + ms;
  while (Date.now() < until) {
    peak = Math.max(peak, await page.evaluate(() => document.getElementById('mic-level').value));
    await sleep(100);
  }
  return peak;
}

test('/speak previews camera and microphone before going on stage, and keeps a mute chosen there', { timeout: 90_000 }, async () => {
  const viewer = await joinIn(browser, 'viewer', `/watch?room=${ROOM}&name=Viewer`);
  const speaker = await openPage(browser, 'speaker');
  pages.push(viewer, speaker);
  const page = speaker.page;
  await page.goto(`${BASE}/speak?room=${ROOM}&name=${encodeURIComponent('Pre Joiner')}&video=640x360`);

  await waitFor('the preview shows the camera', () => page.evaluate(() =>
    document.getElementById('preview').videoWidth > 0 && !document.getElementById('prejoin').hidden));
  assert.equal(await page.isVisible('#grid'), false, 'no stage before joining it');
  assert.equal(await page.evaluate(() => window.dais), undefined, 'nothing joined yet');
  const devices = await page.evaluate(() => ({
    cameras: [...document.querySelectorAll('#camera-select option')].map((o) => o.textContent),
    mics: [...document.querySelectorAll('#mic-select option')].map((o) => o.textContent),
  }));
  assert.ok(devices.cameras.length >= 1 && devices.cameras.every(Boolean), `cameras to choose from: ${devices.cameras}`);
  assert.ok(devices.mics.length >= 1 && devices.mics.every(Boolean), `microphones to choose from: ${devices.mics}`);
  const loud = await peakLevel(page, 1_500);
  assert.ok(loud > 0.2, `the meter moves with the tone (peak ${loud.toFixed(3)})`);
  assert.equal(await viewer.page.locator('#grid .tile').count(), 0, 'the viewer sees no one while the speaker previews');

  await page.click('#prejoin-mic');
  assert.equal(await page.textContent('#prejoin-mic'), 'Unmute mic');
  // The meter shows the next frame's level; from then on it stays down.
  await waitFor('the meter drops', () => page.evaluate(() => document.getElementById('mic-level').value === 0), 2_000);
  const quiet = await peakLevel(page, 1_000);
  assert.ok(quiet < 0.01, `a muted microphone shows no level (peak ${quiet.toFixed(3)})`);

  await page.click('#go-live');
  await waitFor('the speaker is on stage', () => page.evaluate(() => window.dais?.participantId));
  assert.equal(await page.isVisible('#prejoin'), false);
  assert.equal(await page.textContent('#toggle-mic'), 'Unmute mic', 'the stage keeps the mute chosen before');
  const tile = viewer.page.locator('#grid .tile', { hasText: 'Pre Joiner' });
  await waitFor('the viewer decodes the speaker\'s camera', () => tile.evaluate((t) => t.querySelector('video').videoWidth > 0));
  await waitFor('the viewer shows the mic-off badge', async () => (await tile.getAttribute('data-audio-muted')) === 'true');
  await page.click('#toggle-mic');
  await waitFor('unmuted on stage, the badge goes', async () => (await tile.getAttribute('data-audio-muted')) === 'false');

  const problems = pages.flatMap((p) => p.problems.map((x) => `${p.label}: ${x}`));
  assert.deepEqual(problems, [], 'no page threw or logged an error');
});
