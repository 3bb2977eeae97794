// Questions in real pages: a viewer asks twice and its third question at once is refused with the
// page saying why; other viewers upvote, and every page ranks the open questions by votes (a vote
// cast twice counts once, a vote taken back is gone); viewers have no Answered button, the speaker
// marks one answered and it moves to the answered list on every page; a moderator deletes one from
// /moderate and it disappears everywhere; the admin API lists what speakers see.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { BASE, launchBrowser, join as joinIn, waitFor } from './lib.mjs';

const ROOM = `questions-${process.pid}-${Date.now().toString(36)}`;
const KEY = process.env.DAIS_ADMIN_KEY;

let browser;
const pages = [];

/** The open questions a page shows, in order: text and votes; and its answered ones' texts. */
function shown(page) {
  return page.evaluate(() => ({
    open: [...document.querySelectorAll('#questions-list li[data-question-id]')].map((li) => ({
      id: Number(li.dataset.questionId),
      text: li.querySelector('.text')?.textContent,
      votes: Number(li.dataset.votes),
      voted: li.querySelector('.upvote')?.getAttribute('aria-pressed') === 'true',
      answer: Boolean(li.querySelector('.answer')),
    })),
    answered: [...document.querySelectorAll('#answered-list li')].map((li) => li.querySelector('.text')?.textContent),
  }));
}

/** Wait until `page` shows the open questions `want` (text:votes, in order) and answered `done`. */
async function showsOpen(p, want, done = []) {
  return waitFor(`${p.label} shows open ${JSON.stringify(want)}, answered ${JSON.stringify(done)}`, async () => {
    const s = await shown(p.page);
    const got = s.open.map((q) => `${q.text}:${q.votes}`);
    return JSON.stringify(got) === JSON.stringify(want) && JSON.stringify(s.answered) === JSON.stringify(done) ? s : null;
  });
}

async function openQuestions(page) {
  await page.click('#tab-questions');
  await page.waitForSelector('#ask-input', { state: 'visible' });
}

async function ask(page, text) {
  await page.fill('#ask-input', text);
  await page.click('#ask-form button[type=submit]');
}

async function click(page, text, button) {
  await page.locator('#questions-list li', { hasText: text }).locator(button).click();
}

before(async () => {
  assert.ok(KEY, 'DAIS_ADMIN_KEY must be set (scripts/browser-test.sh sets it)');
  browser = await launchBrowser();
});

after(async () => {
  for (const p of pages) if (p.problems.length) console.log(`# ${p.label} page problems:\n#   ${p.problems.join('\n#   ')}`);
  await browser?.close();
});

test('questions: asked, refused, ranked by upvotes, answered and deleted on every page', { timeout: 120_000 }, async () => {
  const speaker = await joinIn(browser, 'speaker', `/speak?room=${ROOM}&name=Host`);
  const ada = await joinIn(browser, 'Ada', `/watch?room=${ROOM}&name=Ada`);
  const bo = await joinIn(browser, 'Bo', `/watch?room=${ROOM}&name=Bo`);
  const cy = await joinIn(browser, 'Cy', `/watch?room=${ROOM}&name=Cy`);
  const moderator = await joinIn(browser, 'moderator', `/moderate?room=${ROOM}&name=Mod`);
  pages.push(speaker, ada, bo, cy, moderator);
  for (const p of pages) await openQuestions(p.page);

  await ask(ada.page, 'Will the slides be shared?');
  await waitFor('Ada is told her question was sent', async () => /sent/i.test(await ada.page.textContent('#ask-error')));
  await ask(ada.page, 'What about pricing?');
  await ask(ada.page, 'And a third one at once?');
  await waitFor('Ada\'s page says she asks too fast', async () =>
    /10 seconds/.test(await ada.page.textContent('#ask-error')));
  for (const p of pages) await showsOpen(p, ['Will the slides be shared?:0', 'What about pricing?:0']);
  assert.equal(await speaker.page.textContent('#questions-count'), '2', 'the tab counts the open questions');

  // Bo and Cy upvote the second, Cy twice over the wire (counted once); Bo also the first, then
  // takes that vote back.
  await click(bo.page, 'pricing', '.upvote');
  await click(cy.page, 'pricing', '.upvote');
  await cy.page.evaluate(() => window.dais.upvote(window.dais.questions.open.find((q) => /pricing/.test(q.text)).id));
  await click(bo.page, 'slides', '.upvote');
  for (const p of pages) await showsOpen(p, ['What about pricing?:2', 'Will the slides be shared?:1']);
  const bos = await shown(bo.page);
  assert.deepEqual(bos.open.map((q) => q.voted), [true, true], 'Bo\'s page shows his votes');
  await click(bo.page, 'slides', '.upvote');
  for (const p of pages) await showsOpen(p, ['What about pricing?:2', 'Will the slides be shared?:0']);

  // Only speakers and moderators get Answered; the speaker answers the top question.
  assert.ok((await shown(ada.page)).open.every((q) => !q.answer), 'a viewer has no Answered button');
  assert.ok((await shown(moderator.page)).open.every((q) => q.answer), 'the moderator has one');
  await click(speaker.page, 'pricing', '.answer');
  for (const p of pages) await showsOpen(p, ['Will the slides be shared?:0'], ['What about pricing?']);

  const res = await fetch(`${BASE}/admin/rooms/${ROOM}/questions`, { headers: { authorization: `Bearer ${KEY}` } });
  assert.equal(res.status, 200);
  const listed = await res.json();
  assert.deepEqual(listed.open.map((q) => q.text), ['Will the slides be shared?']);
  assert.deepEqual(listed.answered.map((q) => q.text), ['What about pricing?']);

  // The moderator deletes the remaining one from /moderate.
  assert.equal(await ada.page.locator('#questions-list .delete').count(), 0, 'viewers delete nothing');
  await click(moderator.page, 'slides', '.delete');
  for (const p of pages) await showsOpen(p, [], ['What about pricing?']);
  assert.equal(await speaker.page.textContent('#questions-count'), '');

  const problems = pages.flatMap((p) => p.problems.map((x) => `${p.label}: ${x}`));
  assert.deepEqual(problems, [], 'no page threw or logged an error');
});
