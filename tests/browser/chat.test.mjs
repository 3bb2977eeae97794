// Chat in real pages: a viewer's message reaches the speaker's page and its own; a message is text,
// never HTML; the fourth message of a burst is refused and the page says why; a message an operator
// deletes (admin API) disappears from every page; a late viewer gets the history without the deleted
// one; and turning viewer chat off disables the viewers' input.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { BASE, launchBrowser, join as joinIn, waitFor } from './lib.mjs';

const ROOM = `chat-${process.pid}-${Date.now().toString(36)}`;
const KEY = process.env.DAIS_ADMIN_KEY;

let browser;
const pages = [];

/** The chat lines a page shows: id, name and text of each, in order. */
function lines(page) {
  return page.evaluate(() => [...document.querySelectorAll('#chat-log li')].map((li) => ({
    id: Number(li.dataset.chatId),
    name: li.querySelector('.who')?.textContent,
    text: li.querySelector('.text')?.textContent,
    html: li.querySelector('.text')?.innerHTML,
  })));
}

async function say(page, text) {
  await page.fill('#chat-input', text);
  await page.click('#chat-form button[type=submit]');
}

function admin(method, path, body) {
  return fetch(`${BASE}/admin/rooms/${ROOM}${path}`, {
    method,
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
}

before(async () => {
  assert.ok(KEY, 'DAIS_ADMIN_KEY must be set (scripts/browser-test.sh sets it)');
  browser = await launchBrowser();
});

after(async () => {
  for (const p of pages) if (p.problems.length) console.log(`# ${p.label} page problems:\n#   ${p.problems.join('\n#   ')}`);
  await browser?.close();
});

test('chat: round trip, text only, rate limit, moderation, history and viewer chat off', { timeout: 90_000 }, async () => {
  const speaker = await joinIn(browser, 'speaker', `/speak?room=${ROOM}&name=Host`);
  const viewer = await joinIn(browser, 'viewer', `/watch?room=${ROOM}&name=Ada`);
  pages.push(speaker, viewer);

  await say(viewer.page, 'hello from the audience');
  for (const p of [speaker, viewer]) {
    const got = await waitFor(`${p.label} shows the viewer's message`, async () => {
      const l = await lines(p.page);
      return l.length === 1 ? l : null;
    });
    assert.equal(got[0].name, 'Ada');
    assert.equal(got[0].text, 'hello from the audience');
  }
  assert.equal(await viewer.page.inputValue('#chat-input'), '', 'the input is cleared once sent');

  // Markup is shown as text.
  await say(speaker.page, '<b>bold</b> & <img src=x onerror=alert(1)>');
  const markup = await waitFor('the viewer shows the speaker\'s message', async () => {
    const l = await lines(viewer.page);
    return l.length === 2 ? l[1] : null;
  });
  assert.equal(markup.text, '<b>bold</b> & <img src=x onerror=alert(1)>');
  assert.equal(await viewer.page.locator('#chat-log b, #chat-log img').count(), 0, 'no element came from a message');

  // A burst: the viewer used 1 of its 3; two more go, the fourth is refused.
  for (const t of ['two', 'three', 'four']) await say(viewer.page, t);
  await waitFor('the viewer page says it is sending too fast', async () =>
    /slow down/i.test(await viewer.page.textContent('#chat-error')));
  const afterBurst = await waitFor('the speaker shows the two that went', async () => {
    const l = await lines(speaker.page);
    return l.length === 4 ? l : null;
  });
  assert.deepEqual(afterBurst.map((l) => l.text).slice(2), ['two', 'three'], 'the refused one was not sent');

  // Moderation: the first message is deleted for everyone.
  const first = afterBurst[0].id;
  assert.equal((await admin('DELETE', `/chat/${first}`)).status, 204);
  assert.equal((await admin('DELETE', '/chat/99999')).status, 404);
  for (const p of [speaker, viewer]) {
    await waitFor(`${p.label} no longer shows the deleted message`, async () =>
      !(await lines(p.page)).some((l) => l.id === first));
  }
  // A late viewer gets the history without it.
  const late = await joinIn(browser, 'late viewer', `/watch?room=${ROOM}&name=Late`);
  pages.push(late);
  const history = await waitFor('the late viewer shows the history', async () => {
    const l = await lines(late.page);
    return l.length === 3 ? l : null;
  });
  assert.deepEqual(history.map((l) => l.text), ['<b>bold</b> & <img src=x onerror=alert(1)>', 'two', 'three']);

  // Viewer chat off: the viewers' input is disabled, the speaker's is not.
  assert.equal((await admin('POST', '/chat', { viewer_chat: false })).status, 204);
  await waitFor('the viewer\'s chat input is disabled', () => viewer.page.isDisabled('#chat-input'));
  assert.equal(await late.page.isDisabled('#chat-input'), true);
  assert.equal(await speaker.page.isDisabled('#chat-input'), false);
  await say(speaker.page, 'speakers still may');
  await waitFor('the viewer shows the speaker\'s message after chat went off', async () =>
    (await lines(viewer.page)).some((l) => l.text === 'speakers still may'));

  const problems = pages.flatMap((p) => p.problems.map((x) => `${p.label}: ${x}`));
  assert.deepEqual(problems, [], 'no page threw or logged an error');
});
