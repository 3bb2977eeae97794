// A raised hand, end to end in real pages: a viewer raises its hand on /watch; the moderator's
// /moderate page (an open development server grants it moderation) lists it; the moderator clicks
// Promote; the viewer's page, on the same WebSocket, starts its camera, and another viewer decodes
// that camera. The promoted viewer's hand is lowered and the moderator's list empties. A plain
// viewer's `moderate` is refused with not_moderator. On a server with join tokens, /moderate without
// a token asks for the admin key, refuses a wrong one, and with the right one mints itself a
// moderator token and moderates.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, join as joinIn, openPage, startDais, waitFor, inbound, fromSpeaker, WAIT_MS } from './lib.mjs';

const ROOM = `hands-${process.pid}-${Date.now().toString(36)}`;

let browser;
let own; // the token test's server
const pages = [];

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await own?.stop();
  for (const p of pages) if (p.problems.length) console.log(`# ${p.label} page problems:\n#   ${p.problems.join('\n#   ')}`);
  await browser?.close();
});

test('a raised hand is promoted from /moderate and its camera reaches the other viewers on the same socket', { timeout: 90_000 }, async () => {
  const host = await joinIn(browser, 'speaker', `/speak?room=${ROOM}&name=Host`);
  const guest = await joinIn(browser, 'guest', `/watch?room=${ROOM}&name=Guest`);
  const other = await joinIn(browser, 'other viewer', `/watch?room=${ROOM}&name=Other`);
  const moderator = await joinIn(browser, 'moderator', `/moderate?room=${ROOM}&name=Mod`);
  pages.push(host, guest, other, moderator);
  assert.equal(await moderator.page.evaluate(() => window.dais.moderator), true, 'the open server grants moderation');
  assert.equal(await moderator.page.isVisible('#raise-hand'), false, 'a moderator raises no hand');
  await waitFor('the moderator lists the speaker on stage', async () =>
    (await moderator.page.locator(`#on-stage li[data-participant-id="${host.id}"]`).count()) === 1);

  // A viewer without the grant is refused.
  const refused = await other.page.evaluate(() => new Promise((resolve) => {
    window.dais.on('error', ({ error }) => { if (error.request === 'moderate') resolve(error.code); });
    window.dais.moderate('kick', { participant: 'p1' });
  }));
  assert.equal(refused, 'not_moderator');

  await guest.page.click('#raise-hand');
  await waitFor('the guest\'s button shows its hand raised', async () =>
    (await guest.page.getAttribute('#raise-hand', 'aria-pressed')) === 'true');
  const row = moderator.page.locator(`#hands li[data-participant-id="${guest.id}"]`);
  await waitFor('the moderator sees the raised hand', async () => (await row.count()) === 1);
  assert.match(await row.textContent(), /Guest/);
  await waitFor('the speaker hears of the raised hand', () =>
    host.page.evaluate((id) => window.dais.hands.some((h) => h.participantId === id), guest.id));
  assert.deepEqual(await other.page.evaluate(() => window.dais.hands), [], 'viewers do not see raised hands');

  const socketsBefore = await guest.page.evaluate(() => window.dais.timing.joined);
  await row.locator('button[data-action="promote"]').click();
  await waitFor('the other viewer decodes the promoted guest\'s camera', async () => {
    const video = fromSpeaker(await inbound(other.page), guest.id, 'video');
    return video.length === 1 && video[0].framesDecoded > 10;
  });
  assert.equal(await guest.page.evaluate(() => window.dais.role), 'speaker');
  assert.equal(await guest.page.evaluate(() => window.dais.timing.joined), socketsBefore, 'no new join: the same WebSocket');
  await waitFor('the moderator\'s list of hands empties', async () => (await row.count()) === 0);
  await waitFor('the moderator lists the guest on stage', async () =>
    (await moderator.page.locator(`#on-stage li[data-participant-id="${guest.id}"]`).count()) === 1);
  assert.equal(await guest.page.isVisible('#raise-hand'), false, 'a speaker raises no hand');

  const problems = pages.flatMap((p) => p.problems.map((x) => `${p.label}: ${x}`));
  assert.deepEqual(problems, [], 'no page threw or logged an error');
});

test('on a server with join tokens, /moderate logs in with the admin key and moderates', { timeout: 90_000 }, async () => {
  const KEY = `moderate-key-${process.pid}`;
  own = await startDais(['--http-addr', '127.0.0.1:0', '--media-addr', '127.0.0.1:0'],
    { DAIS_ADMIN_KEY: KEY, DAIS_TOKEN_SECRET: `moderate-secret-${process.pid}-0123456789abcdef` });
  const mint = async (name, role) => {
    const res = await fetch(`${own.base}/admin/rooms/${ROOM}/tokens`, {
      method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name, role }),
    });
    assert.equal(res.status, 200);
    return (await res.json()).token;
  };
  const host = await joinIn(browser, 'token speaker', `/speak?token=${await mint('Host', 'speaker')}`, own.base);
  const guest = await joinIn(browser, 'token viewer', `/watch?token=${await mint('Guest', 'viewer')}`, own.base);
  pages.push(host, guest);

  const moderator = await openPage(browser, 'key moderator');
  pages.push(moderator);
  await moderator.page.goto(`${own.base}/moderate?room=${ROOM}`);
  await waitFor('the page asks for the admin key', () => moderator.page.isVisible('#join-form input[name="key"]'));
  assert.match(moderator.page.url(), /login=1/);
  await moderator.page.fill('#join-form input[name="key"]', 'not-the-key');
  await moderator.page.click('#join-form button[type="submit"]');
  await waitFor('a wrong key is refused on the page', async () =>
    /wrong admin key/.test(await moderator.page.textContent('#status')));
  await moderator.page.fill('#join-form input[name="name"]', 'Chair');
  await moderator.page.fill('#join-form input[name="key"]', KEY);
  await moderator.page.click('#join-form button[type="submit"]');
  await moderator.page.waitForFunction(() => window.dais?.participantId, null, { timeout: WAIT_MS });
  assert.equal(await moderator.page.evaluate(() => window.dais.moderator), true, 'the minted token carries the grant');
  assert.doesNotMatch(moderator.page.url(), /key|token/, 'neither the key nor the token goes into the URL');
  assert.equal(await moderator.page.inputValue('#join-form input[name="key"]'), '', 'the page keeps no copy of the key');
  await waitFor('the moderator lists the speaker on stage', async () =>
    (await moderator.page.locator(`#on-stage li[data-participant-id="${host.id}"]`).count()) === 1);

  await guest.page.click('#raise-hand');
  const row = moderator.page.locator(`#hands li[data-participant-id="${guest.id}"]`);
  await waitFor('the moderator sees the raised hand', async () => (await row.count()) === 1);
  await row.locator('button[data-action="lower_hand"]').click();
  await waitFor('the guest\'s hand is lowered', async () =>
    (await guest.page.getAttribute('#raise-hand', 'aria-pressed')) === 'false');
  await moderator.page.locator(`#on-stage li[data-participant-id="${host.id}"] button[data-action="kick"]`).click();
  await waitFor('the kicked speaker leaves the moderator\'s list', async () =>
    (await moderator.page.locator(`#on-stage li[data-participant-id="${host.id}"]`).count()) === 0);
});
