// Positions and resume (PROTOCOL.md §5.6) end to end: the demo page in headless Chromium
// against the release binary, whose sockets the test routes through Playwright so that it can
// cut them and hold reconnects back while it posts. Each scenario ends with the page showing
// exactly the messages sent, each once. The service gets its own server: one test kills it.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import path from 'node:path';

import { MessagingServer, ensureArtifactsDir, launchBrowser, openPage, socketGate, waitUntil } from './harness.mjs';

const CHURCH = 'RESUME';

let server;
let browser;

before(async () => {
  server = await new MessagingServer().start();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.dispose();
});

/** The demo page in `stream`, joined, with its sockets behind a gate and its requests logged. */
async function openLive(stream, extra = {}) {
  const query = new URLSearchParams({ church: CHURCH, stream, name: 'Ada', join: '1', ...extra });
  let gate;
  const page = await openPage(browser.context, `${server.origin}/demo?${query}`, {
    beforeGoto: async (p) => { gate = await socketGate(p); },
  });
  const requests = [];
  page.on('request', (request) => requests.push({ method: request.method(), url: request.url(), body: request.postData() }));
  await page.getByTestId('live-room-name').waitFor();
  await page.waitForFunction(() => document.querySelector('[data-testid="live-status"]')?.dataset.state === 'open');
  const conversationId = await page.locator('#live-room').getAttribute('data-conversation-id');
  const socketId = await page.getByTestId('live-status').getAttribute('data-socket-id');
  return { page, gate, requests, conversationId, socketId };
}

const texts = (page) => page.getByTestId('live-messages').locator('.msg-text').allInnerTexts();

/** Waits until the live chat shows exactly `expected`, in order (no duplicate, none missing). */
async function showsExactly(page, expected) {
  try {
    await page.waitForFunction((want) => {
      const got = [...document.querySelectorAll('[data-testid="live-messages"] .msg-text')].map((el) => el.textContent);
      return JSON.stringify(got) === JSON.stringify(want);
    }, expected, { timeout: 20000 });
  } catch (error) {
    assert.deepEqual(await texts(page), expected, `the page's messages (${error.message})`);
  }
}

/** Posts from the test itself (REST, not the page), one message per request. */
async function post(conversationId, contents) {
  for (const content of contents) {
    await server.rest('POST', '/messages/send', { body: [{ conversationId, content, displayName: 'Grace' }] });
  }
}

/** Releases the gate and nudges the page (`online`, as a browser does when the network comes
 *  back) until it has a new socket open, instead of waiting out its backoff. */
async function reconnect(page, gate, previousSocketId) {
  gate.release();
  return waitUntil(async () => {
    const status = await page.evaluate(() => {
      const el = document.querySelector('[data-testid="live-status"]');
      return { state: el?.dataset.state, socketId: el?.dataset.socketId };
    });
    if (status.state === 'open' && status.socketId && status.socketId !== previousSocketId) return status.socketId;
    await page.evaluate(() => window.dispatchEvent(new Event('online')));
    return null;
  }, { timeoutMs: 30000, intervalMs: 200, what: 'the page to reconnect' });
}

async function offline(page) {
  await page.waitForFunction(() => document.querySelector('[data-testid="live-status"]')?.dataset.state !== 'open');
}

/** The page's join posts (`POST /messaging/connections`) from `from` on, parsed. */
function joinPosts(requests, from = 0) {
  return requests.slice(from)
    .filter((r) => r.method === 'POST' && new URL(r.url).pathname === '/messaging/connections')
    .map((r) => JSON.parse(r.body));
}

function catchups(requests, from = 0) {
  return requests.slice(from).filter((r) => r.method === 'GET' && r.url.includes('/messaging/messages/catchup/'));
}

async function syncNote(page) {
  return page.getByTestId('live-sync').evaluate((el) => ({ hidden: el.hidden, text: el.textContent, ...el.dataset }));
}

function assertNoPageErrors(page) {
  assert.deepEqual(page.errors.map(String), [], 'uncaught errors in the page');
}

describe('positions and resume in Chromium', () => {
  test('a dropped socket resumes: the missed frames are replayed once, nothing is refetched', { timeout: 90000 }, async () => {
    const { page, gate, requests, conversationId, socketId } = await openLive(`drop-${Date.now()}`);
    assert.match(gate.urls[0], /\?positions=1$/, 'the page opts into positions');
    // Posted by the test, so it can only reach the page as a frame: the page's position moves.
    await post(conversationId, ['Before the drop']);
    await showsExactly(page, ['Before the drop']);

    // Cut the page's socket and hold its reconnects back while three messages are sent.
    gate.hold();
    await gate.drop();
    await offline(page);
    const missed = ['Missed one', 'Missed two', 'Missed three'];
    await post(conversationId, missed);
    assert.deepEqual(await texts(page), ['Before the drop'], 'nothing reached the page meanwhile');
    const mark = requests.length;

    await reconnect(page, gate, socketId);
    await showsExactly(page, ['Before the drop', ...missed]);
    await page.waitForFunction(() => document.querySelector('[data-testid="live-sync"]')?.dataset.resumes === '1');
    const note = await syncNote(page);
    assert.equal(note.hidden, false);
    assert.equal(note.event, 'resume');
    assert.equal(note.count, '3');
    assert.equal(note.gaps, '0');
    assert.match(note.text, /^Resumed: 3 missed frames replayed/);

    // The re-join named the position reached before the drop, and nothing was fetched: the
    // three messages came as replayed frames.
    const [rejoin] = joinPosts(requests, mark);
    assert.equal(rejoin.length, 1);
    assert.equal(rejoin[0].conversationId, conversationId);
    assert.equal(rejoin[0].since?.seq, 1, JSON.stringify(rejoin[0]));
    assert.equal(typeof rejoin[0].since.epoch, 'string');
    assert.deepEqual(catchups(requests, mark), [], 'no REST catch-up after a resume');

    // Live frames go on on the new socket, still without duplicates.
    await post(conversationId, ['After the drop']);
    await showsExactly(page, ['Before the drop', ...missed, 'After the drop']);
    assertNoPageErrors(page);
    await page.close();
  });

  test('the service is killed and restarted: the re-join gets a gap (epoch), the page refetches and shows the gap', { timeout: 120000 }, async () => {
    const { page, gate, requests, conversationId, socketId } = await openLive(`crash-${Date.now()}`);
    await post(conversationId, ['Before the crash']);
    await showsExactly(page, ['Before the crash']);

    // SIGKILL: no close frame, no clean-up; the page's socket just ends.
    gate.hold();
    await server.kill();
    await offline(page);

    // Back on the same database file and ports, with a new epoch. Messages are posted before
    // the page can reconnect, so they can only reach it through the REST refetch.
    await server.start();
    const missed = ['While away one', 'While away two', 'While away three'];
    await post(conversationId, missed);
    const mark = requests.length;

    await reconnect(page, gate, socketId);
    await showsExactly(page, ['Before the crash', ...missed]);
    await page.waitForFunction(() => document.querySelector('[data-testid="live-sync"]')?.dataset.gaps === '1');
    const note = await syncNote(page);
    assert.equal(note.event, 'gap');
    assert.equal(note.reason, 'epoch');
    assert.equal(note.count, '3', 'the refetch recovered the three messages');
    assert.equal(note.resumes, '0');
    assert.match(note.text, /^Gap \(epoch\): room refetched, 3 messages recovered/);
    await page.getByTestId('live-panel').screenshot({ path: path.join(ensureArtifactsDir(), 'demo-gap.png') });

    // The re-join named the old epoch; the refetch came after it.
    const rejoins = joinPosts(requests, mark);
    assert.ok(rejoins.length >= 1);
    assert.equal(rejoins[0][0].since?.seq, 1, JSON.stringify(rejoins[0]));
    const fetched = catchups(requests, mark);
    assert.equal(fetched.length, 1, 'one refetch for one gap');
    assert.match(fetched[0].url, new RegExp(`/messages/catchup/${CHURCH}/${conversationId}\\?since=`));

    await post(conversationId, ['After the restart']);
    await showsExactly(page, ['Before the crash', ...missed, 'After the restart']);
    assert.equal((await syncNote(page)).gaps, '1', 'no second gap');
    assertNoPageErrors(page);
    await page.close();
  });

  test('positions=0: the socket URL and joins are as before, and a REST catch-up covers the drop', { timeout: 90000 }, async () => {
    const { page, gate, requests, conversationId, socketId } = await openLive(`plain-${Date.now()}`, { positions: '0' });
    assert.doesNotMatch(gate.urls[0], /positions/, 'no opt-in');
    await post(conversationId, ['Before the drop']);
    await showsExactly(page, ['Before the drop']);

    gate.hold();
    await gate.drop();
    await offline(page);
    await post(conversationId, ['Missed while plain']);
    const mark = requests.length;

    await reconnect(page, gate, socketId);
    await showsExactly(page, ['Before the drop', 'Missed while plain']);
    const [rejoin] = joinPosts(requests, mark);
    assert.deepEqual(Object.keys(rejoin[0]).sort(), ['churchId', 'conversationId', 'displayName', 'socketId']);
    assert.equal(catchups(requests, mark).length, 1, 'caught up through REST after the re-join');
    assert.equal((await syncNote(page)).hidden, true, 'no resume or gap to show');
    assertNoPageErrors(page);
    await page.close();
  });

  test('two nodes: reconnect to the other node and resume', {
    skip: 'positions are not kept with BROKER_URL yet (README "Positions and resume", "Not yet"): a second node would serve positions=1 sockets without seq or position; that fallback is covered by the unit tests (positions off: a server without positions)',
  }, () => {});
});
