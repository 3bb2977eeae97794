// Reactions at audience scale: 200 scripted viewers (plain WebSockets from Node, the `ws` package,
// speaking the protocol of docs/protocol.md) react in a burst spread over about 3 s, while a real
// /watch page in Chromium listens. The page must receive the room's reactions as aggregated
// `reactions` messages, at most one per 500 ms, whose interval counts add up to the totals, and the
// totals must be exactly what the scripted viewers sent, plus one click on the page's own button.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { BASE, launchBrowser, join as joinIn, waitFor, sleep } from './lib.mjs';

const ROOM = `reactions-${process.pid}-${Date.now().toString(36)}`;
const BOTS = 200;

let browser;
let viewer;
const bots = [];

/** A scripted viewer: joined, and counting the `reactions` messages it hears. */
function bot(i) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${BASE.replace(/^http/, 'ws')}/ws`);
    const b = { ws, heard: 0, errors: [] };
    ws.on('open', () => ws.send(JSON.stringify({ type: 'join', room: ROOM, name: `bot-${i}`, role: 'viewer', version: 1 })));
    ws.on('message', (data) => {
      const m = JSON.parse(String(data));
      if (m.type === 'joined') resolve(b);
      else if (m.type === 'reactions') b.heard += 1;
      else if (m.type === 'error') b.errors.push(m.code);
    });
    ws.on('error', reject);
  });
}

before(async () => {
  browser = await launchBrowser();
  viewer = await joinIn(browser, 'viewer', `/watch?room=${ROOM}`);
  await viewer.page.evaluate(() => {
    window.reactionLog = [];
    window.dais.on('reactions', (r) => window.reactionLog.push({ at: performance.now(), ...r }));
  });
  for (let i = 0; i < BOTS; i++) bots.push(await bot(i));
});

after(async () => {
  for (const b of bots) b.ws.close();
  if (viewer?.problems.length) console.log(`# viewer page problems:\n#   ${viewer.problems.join('\n#   ')}`);
  await browser?.close();
});

test('200 viewers\' reactions reach a browser as totals at most twice a second, and they add up', { timeout: 60_000 }, async () => {
  const expected = { applause: 0, heart: 0, celebrate: 0 };
  const sends = [];
  bots.forEach((b, i) => {
    const mine = ['applause', ...(i % 2 === 0 ? ['heart'] : []), ...(i % 5 === 0 ? ['celebrate'] : [])];
    for (const r of mine) expected[r] += 1;
    sends.push(sleep(Math.floor((i / BOTS) * 3_000)).then(() => {
      for (const r of mine) b.ws.send(JSON.stringify({ type: 'react', reaction: r }));
    }));
  });
  await Promise.all(sends);
  // One click on the page's own reaction button.
  await viewer.page.click('button.reaction[data-reaction="applause"]');
  expected.applause += 1;

  const log = await waitFor('the page\'s totals match everything sent', async () => {
    const l = await viewer.page.evaluate(() => window.reactionLog);
    return JSON.stringify(l.at(-1)?.totals) === JSON.stringify(expected) ? l : null;
  }, 15_000);
  console.log(`# ${log.length} reactions messages for ${Object.values(expected).reduce((a, b) => a + b)} reactions`);
  const sum = {};
  for (const m of log) for (const [r, n] of Object.entries(m.counts)) sum[r] = (sum[r] ?? 0) + n;
  assert.deepEqual(sum, expected, 'the intervals\' counts add up to the totals');
  for (let i = 1; i < log.length; i++) {
    assert.ok(log[i].at - log[i - 1].at >= 450, `two reactions messages ${(log[i].at - log[i - 1].at).toFixed(0)} ms apart`);
  }
  assert.ok(log.length >= 3 && log.length <= 12, `${log.length} messages over a 3 s burst`);
  // Every scripted viewer heard aggregated messages too, no error, and no more than the page did.
  await sleep(600);
  for (const b of bots) {
    assert.deepEqual(b.errors, []);
    assert.ok(b.heard >= 1 && b.heard <= log.length + 1, `a bot heard ${b.heard} messages`);
  }
  // The page showed the last interval in its feed (cleared again after 2 s).
  assert.ok(await viewer.page.evaluate(() => document.querySelectorAll('#reactions-feed .chip').length) >= 1);
});
