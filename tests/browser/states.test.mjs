// Page states a new user meets before anything happens: a viewer alone in a room is told that no one
// is on stage (not "Connecting media…" forever), and goes Live once a speaker arrives; the /watch
// form shows no error border before anything is typed, and shows one for a bad room name once typed;
// the "Click to unmute" prompt covers no speaker's name, on desktop or on a phone; the header shows
// the event's title (from a join token, reaching a page that joined before it) and who joins or
// leaves the stage.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { BASE, launchBrowser, join as joinIn, openPage, startDais, waitFor } from './lib.mjs';

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

test('the header shows the event title from a token, and who joins and leaves the stage', { timeout: 90_000 }, async () => {
  const KEY = `states-key-${process.pid}-0123456789abcdef`;
  const own = await startDais(['--http-addr', '127.0.0.1:0', '--media-addr', '127.0.0.1:0'],
    { DAIS_ADMIN_KEY: KEY, DAIS_TOKEN_SECRET: `states-secret-${process.pid}-0123456789abcdef` });
  try {
    const room = `${ROOM}-title`;
    const TITLE = 'Summit 2026: Opening keynote';
    const mint = async (body) => {
      const res = await fetch(`${own.base}/admin/rooms/${room}/tokens`, {
        method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      assert.equal(res.status, 200, await res.clone().text());
      return (await res.json()).token;
    };
    const bad = await fetch(`${own.base}/admin/rooms/${room}/tokens`, {
      method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'X', role: 'viewer', title: 'a\u0007bell' }),
    });
    assert.equal(bad.status, 400, 'a title with a control character is refused');

    // The first viewer's token has no title: the header shows the room's name.
    const early = await joinIn(browser, 'untitled viewer', `/watch?token=${await mint({ name: 'Early', role: 'viewer' })}`, own.base);
    pages.push(early);
    assert.equal(await early.page.textContent('#room-name'), room);
    // A later token carries the title: its page shows it at once, the earlier page once told.
    const late = await joinIn(browser, 'titled viewer', `/watch?token=${await mint({ name: 'Late', role: 'viewer', title: TITLE })}`, own.base);
    pages.push(late);
    assert.equal(await late.page.textContent('#room-name'), TITLE);
    assert.match(await late.page.title(), /^Summit 2026: Opening keynote/);
    await waitFor('the earlier page shows the title', async () => (await early.page.textContent('#room-name')) === TITLE);

    const host = await joinIn(browser, 'host', `/speak?token=${await mint({ name: 'Host Speaker', role: 'speaker' })}`, own.base);
    pages.push(host);
    for (const v of [early, late]) {
      await waitFor(`${v.label} announces the speaker`, async () => (await v.page.textContent('#notice')) === 'Host Speaker joined the stage');
    }
    assert.equal(await host.page.textContent('#room-name'), TITLE, 'a token without a title keeps the room\'s');
    await host.page.click('#leave');
    await waitFor('the viewer announces the speaker left', async () => (await late.page.textContent('#notice')) === 'Host Speaker left');
  } finally {
    await own.stop();
  }
});
