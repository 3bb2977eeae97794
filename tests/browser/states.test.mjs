// Page states a new user meets before anything happens: a viewer alone in a room is told that no one
// is on stage (not "Connecting media…" forever), and goes Live once a speaker arrives; the /watch
// form shows no error border before anything is typed, and shows one for a bad room name once typed;
// the "Click to unmute" prompt covers no speaker's name, on desktop or on a phone.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { BASE, launchBrowser, join as joinIn, openPage, waitFor } from './lib.mjs';

const ROOM = `states-${process.pid}-${Date.now().toString(36)}`;

let browser;
const pages = [];

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  for (const p of pages) if (p.problems.length) console.log(`# ${p.label} page problems:\n#   ${p.problems.join('\n#   ')}`);
  await browser?.close();
});

const status = (p) => p.page.textContent('#status');

test('a viewer of an empty stage is told so, then goes live when a speaker arrives', { timeout: 60_000 }, async () => {
  const viewer = await joinIn(browser, 'early viewer', `/watch?room=${ROOM}&name=Early`);
  pages.push(viewer);
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(await status(viewer), 'Joined: no one is on stage yet');
  assert.equal(await viewer.page.isVisible('#grid'), true);
  const speaker = await joinIn(browser, 'speaker', `/speak?room=${ROOM}&name=Host`);
  pages.push(speaker);
  await waitFor('the viewer goes live', async () => (await status(viewer)) === 'Live');
});

test('the /watch form shows no error before anything is typed', { timeout: 30_000 }, async () => {
  const form = await openPage(browser, 'watch form');
  pages.push(form);
  await form.page.goto(`${BASE}/watch`);
  const room = form.page.locator('#join-form input[name="room"]');
  await room.waitFor();
  const border = () => room.evaluate((i) => getComputedStyle(i).borderColor);
  const untouched = await border();
  const danger = await form.page.evaluate(() => {
    const probe = document.createElement('div');
    probe.style.color = getComputedStyle(document.documentElement).getPropertyValue('--danger');
    document.body.append(probe);
    return getComputedStyle(probe).color;
  });
  assert.notEqual(untouched, danger, 'an untouched empty field has no error border');
  await room.fill('no spaces allowed');
  await room.blur();
  assert.equal(await border(), danger, 'a bad room name, once typed, has the error border');
});

test('the unmute prompt covers no name, at 1280x800 and on a 390x844 phone', { timeout: 60_000 }, async () => {
  const room = `${ROOM}-unmute`;
  const speakers = [];
  // Names of realistic length: the old floating prompt covered the second tile's.
  for (const n of ['Annabelle Fitzgerald', 'Bartholomew Okonkwo-Smith']) {
    speakers.push(await joinIn(browser, `speaker ${n}`, `/speak?room=${room}&name=${encodeURIComponent(n)}`));
  }
  pages.push(...speakers);
  for (const viewport of [{ width: 1280, height: 800 }, { width: 390, height: 844 }]) {
    const viewer = await joinIn(browser, `viewer ${viewport.width}`, `/watch?room=${room}`, BASE, { viewport });
    pages.push(viewer);
    await waitFor('two named tiles', async () => (await viewer.page.locator('.tile .label .name').count()) === 2);
    // The tests' Chromium may autoplay, so the prompt is shown by hand, as a browser that refuses would.
    const overlaps = await viewer.page.evaluate(() => {
      const prompt = document.getElementById('unmute');
      prompt.hidden = false;
      const p = prompt.getBoundingClientRect();
      if (!p.width || !p.height) return ['the prompt has no size'];
      return [...document.querySelectorAll('.tile .label')].filter((l) => {
        const r = l.getBoundingClientRect();
        return r.left < p.right && p.left < r.right && r.top < p.bottom && p.top < r.bottom;
      }).map((l) => l.textContent);
    });
    assert.deepEqual(overlaps, [], `at ${viewport.width}x${viewport.height} the prompt covers no name`);
  }
});
