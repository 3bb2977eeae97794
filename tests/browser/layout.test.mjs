// The stage's layout in real pages, for 1 to 6 speakers at 1280x800 and on a 390x844 phone: every
// tile keeps its video's aspect ratio (letterbox bands under 10 %), rows are balanced (no row more
// than one tile longer than another, longer rows first) and each row is centred, so no full row has
// an empty cell; tiles never overlap and stay on the stage; and every speaker's name is visible,
// covered by nothing. Then a pinned tile takes the stage with the others in a strip below it, and
// a tile goes full screen.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, join as joinIn, waitFor } from './lib.mjs';

const ROOM = `layout-${process.pid}-${Date.now().toString(36)}`;
const NAMES = ['Amelia Hartington', 'Bo Lindqvist', 'Chidi Okonkwo', 'Dana Whitfield-Ruiz', 'Eun-ji Park', 'Farid Haddad'];
const VIEWPORTS = [{ width: 1280, height: 800 }, { width: 390, height: 844 }];

let browser;
const pages = [];

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  for (const p of pages) if (p.problems.length) console.log(`# ${p.label} page problems:\n#   ${p.problems.join('\n#   ')}`);
  await browser?.close();
});

/** What the page's stage looks like: each tile's box, video size and name, and the stage's box. */
function geometry(page) {
  return page.evaluate(() => {
    const box = (r) => ({ left: r.left, top: r.top, right: r.right, bottom: r.bottom, width: r.width, height: r.height });
    const grid = document.getElementById('grid');
    const gs = getComputedStyle(grid);
    const g = grid.getBoundingClientRect();
    const content = {
      left: g.left + parseFloat(gs.paddingLeft), right: g.right - parseFloat(gs.paddingRight),
      top: g.top + parseFloat(gs.paddingTop), bottom: g.bottom - parseFloat(gs.paddingBottom),
    };
    const tiles = [...grid.querySelectorAll('.tile')].map((t) => {
      const video = t.querySelector('video');
      const name = t.querySelector('.label .name');
      const n = name.getBoundingClientRect();
      const hit = document.elementFromPoint(n.left + n.width / 2, n.top + n.height / 2);
      return {
        id: t.dataset.participantId,
        box: box(t.getBoundingClientRect()),
        videoWidth: video.videoWidth,
        videoHeight: video.videoHeight,
        name: box(n),
        nameText: name.textContent,
        nameHit: Boolean(hit && t.querySelector('.label').contains(hit)),
      };
    });
    return { content, tiles, viewport: { width: innerWidth, height: innerHeight } };
  });
}

/** Every layout rule the issue sets, for one page state; returns the rows' tile counts. */
function check(geo, what) {
  const { content, tiles, viewport } = geo;
  const near = (a, b, tol = 2) => Math.abs(a - b) <= tol;
  for (const t of tiles) {
    const b = t.box;
    assert.ok(b.width >= 80 && b.height >= 45, `${what}: tile ${t.nameText} is ${b.width}x${b.height}`);
    assert.ok(b.left >= content.left - 1 && b.right <= content.right + 1 && b.top >= content.top - 1 && b.bottom <= content.bottom + 1,
      `${what}: tile ${t.nameText} ${JSON.stringify(b)} leaves the stage ${JSON.stringify(content)}`);
    assert.ok(b.right <= viewport.width + 1 && b.bottom <= viewport.height + 1, `${what}: tile ${t.nameText} is off screen`);
    // The video is drawn with object-fit: contain in the whole tile: the bands are what its aspect
    // ratio leaves uncovered.
    const va = t.videoWidth / t.videoHeight;
    const ta = b.width / b.height;
    const band = 1 - Math.min(va / ta, ta / va);
    assert.ok(band <= 0.1, `${what}: tile ${t.nameText} (${b.width.toFixed(0)}x${b.height.toFixed(0)}) letterboxes its ${t.videoWidth}x${t.videoHeight} video by ${(band * 100).toFixed(1)} %`);
    assert.ok(t.nameHit, `${what}: the name ${t.nameText} is covered`);
    assert.ok(t.name.left >= b.left - 1 && t.name.right <= b.right + 1 && t.name.bottom <= b.bottom + 1, `${what}: the name ${t.nameText} leaves its tile`);
    assert.ok(t.name.width >= 20, `${what}: the name ${t.nameText} is squeezed to ${t.name.width} px`);
  }
  for (const [i, a] of tiles.entries()) {
    for (const b of tiles.slice(i + 1)) {
      const overlap = a.box.left < b.box.right - 1 && b.box.left < a.box.right - 1 && a.box.top < b.box.bottom - 1 && b.box.top < a.box.bottom - 1;
      assert.ok(!overlap, `${what}: tiles ${a.nameText} and ${b.nameText} overlap`);
    }
  }
  const rows = [];
  for (const t of [...tiles].sort((a, b) => a.box.top - b.box.top || a.box.left - b.box.left)) {
    const row = rows.find((r) => near(r[0].box.top, t.box.top));
    if (row) row.push(t);
    else rows.push([t]);
  }
  const counts = rows.map((r) => r.length);
  assert.ok(Math.max(...counts) - Math.min(...counts) <= 1, `${what}: unbalanced rows ${counts}`);
  assert.deepEqual(counts, [...counts].sort((a, b) => b - a), `${what}: a shorter row above a longer one: ${counts}`);
  for (const r of rows) {
    const left = Math.min(...r.map((t) => t.box.left)) - content.left;
    const right = content.right - Math.max(...r.map((t) => t.box.right));
    assert.ok(near(left, right, 3), `${what}: a row of ${r.length} is not centred (${left.toFixed(0)} px left, ${right.toFixed(0)} px right)`);
  }
  return counts;
}

test('the stage fits 1 to 6 speakers on a desktop and a phone, then pins and goes full screen', { timeout: 240_000 }, async () => {
  const viewer = await joinIn(browser, 'viewer', `/watch?room=${ROOM}&name=Viewer`);
  pages.push(viewer);
  const summary = [];
  for (const [k, name] of NAMES.entries()) {
    const speaker = await joinIn(browser, name, `/speak?room=${ROOM}&name=${encodeURIComponent(name)}&video=320x180&simulcast=0`);
    pages.push(speaker);
    await viewer.page.setViewportSize(VIEWPORTS[0]);
    await waitFor(`the viewer shows ${k + 1} videos`, () => viewer.page.evaluate((n) => {
      const tiles = [...document.querySelectorAll('#grid .tile')];
      return tiles.length === n && tiles.every((t) => t.querySelector('video').videoWidth > 0);
    }, k + 1));
    for (const vp of VIEWPORTS) {
      await viewer.page.setViewportSize(vp);
      const what = `${k + 1} speakers at ${vp.width}x${vp.height}`;
      // The layout follows a resize within a frame or two.
      const counts = await waitFor(`${what}: a layout that keeps every rule`, async () => {
        try {
          return check(await geometry(viewer.page), what);
        } catch (err) {
          if (err instanceof assert.AssertionError) { viewer.lastLayoutError = err; return null; }
          throw err;
        }
      }, 5_000).catch(() => { throw viewer.lastLayoutError; });
      summary.push(`${what}: rows ${counts.join('+')}`);
      // DAIS_SCREENSHOTS=DIR keeps a picture of each state, for a human to look at.
      if (process.env.DAIS_SCREENSHOTS) await viewer.page.screenshot({ path: `${process.env.DAIS_SCREENSHOTS}/layout-${k + 1}-${vp.width}.png` });
    }
  }
  console.log(`# ${summary.join('\n# ')}`);

  // Pin the third speaker: its tile takes the stage, the other five sit in one strip below it.
  await viewer.page.setViewportSize(VIEWPORTS[0]);
  const third = viewer.page.locator('#grid .tile', { hasText: NAMES[2] });
  await third.hover();
  await third.locator('.pin').click();
  const pinned = await waitFor('the pinned tile takes the stage', async () => {
    const geo = await geometry(viewer.page);
    const big = geo.tiles.find((t) => t.nameText === NAMES[2]);
    const others = geo.tiles.filter((t) => t !== big);
    const area = (t) => t.box.width * t.box.height;
    const strip = others.every((t) => Math.abs(t.box.top - others[0].box.top) < 2 && t.box.top >= big.box.bottom);
    return others.every((t) => area(big) > 6 * area(t)) && strip ? geo : null;
  });
  if (process.env.DAIS_SCREENSHOTS) await viewer.page.screenshot({ path: `${process.env.DAIS_SCREENSHOTS}/layout-pinned.png` });
  for (const t of pinned.tiles) assert.ok(t.nameHit, `pinned: the name ${t.nameText} is covered`);
  assert.equal(await third.locator('.pin').getAttribute('aria-pressed'), 'true');
  await third.locator('.pin').click();
  await waitFor('unpinned, the balanced layout is back', async () => {
    try { return check(await geometry(viewer.page), 'unpinned'); } catch { return null; }
  });

  await third.hover();
  await third.locator('.fullscreen').click();
  await waitFor('the tile is full screen', () => viewer.page.evaluate((n) =>
    document.fullscreenElement?.querySelector('.name')?.textContent === n, NAMES[2]));
  await viewer.page.evaluate(() => document.exitFullscreen());

  const problems = pages.flatMap((p) => p.problems.map((x) => `${p.label}: ${x}`));
  assert.deepEqual(problems, [], 'no page threw or logged an error');
});
