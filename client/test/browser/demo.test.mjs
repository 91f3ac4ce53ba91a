// End-to-end tests of the demo page and the client library, in headless Chromium against the
// real release binary. One server (restarted in place by the outage test) and one browser.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import path from 'node:path';

import { MessagingServer, ensureArtifactsDir, launchBrowser, openPage } from './harness.mjs';

const CHURCH = 'DEMO'; // unknown to the fresh database: the page must create its first room

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

function liveUrl(stream, name, extra = {}) {
  const query = new URLSearchParams({ church: CHURCH, stream, name, join: '1', ...extra });
  return `${server.origin}/demo?${query}`;
}

/** Waits until the page's "N watching" shows `n`. */
async function viewerCount(page, n) {
  await page.waitForFunction(
    (expected) => document.querySelector('[data-testid="viewer-count"]')?.dataset.count === String(expected),
    n,
  );
  assert.equal((await page.getByTestId('viewer-count').innerText()).trim(), `${n} watching`);
}

/** Waits until a live-chat message with exactly this text is shown. */
function liveMessage(page, text) {
  return page.getByTestId('live-messages').locator('.msg-text', { hasText: text }).first().waitFor();
}

async function joined(page) {
  await page.getByTestId('live-room-name').waitFor();
  await page.waitForFunction(() => document.querySelector('[data-testid="live-status"]')?.dataset.state === 'open');
}

async function sendLive(page, text) {
  await page.getByTestId('live-input').fill(text);
  await page.getByTestId('live-send').click();
  await liveMessage(page, text);
}

function assertNoPageErrors(...pages) {
  for (const page of pages) assert.deepEqual(page.errors.map(String), [], 'uncaught errors in the page');
}

describe('demo page in Chromium', () => {
  test('two pages in one room see each other’s messages and the viewer count go 1 → 2 → 1', { timeout: 90000 }, async () => {
    const stream = `two-pages-${Date.now()}`;
    const ada = await openPage(browser.context, liveUrl(stream, 'Ada'));
    await joined(ada);
    await viewerCount(ada, 1);
    await ada.getByTestId('viewer-list').getByText('Ada').waitFor();

    // The second tab uses the dedicated WebSocket port: both entry points share rooms (§1).
    const bo = await openPage(browser.context, liveUrl(stream, 'Bo', { socket: server.socketPortUrl }));
    await joined(bo);
    await viewerCount(ada, 2);
    await viewerCount(bo, 2);
    await bo.getByTestId('viewer-list').getByText('Ada').waitFor();
    await bo.getByTestId('viewer-list').getByText('Bo').waitFor();

    await sendLive(ada, 'Hello from Ada');
    await liveMessage(bo, 'Hello from Ada');
    await sendLive(bo, 'Hi Ada, Bo here');
    await liveMessage(ada, 'Hi Ada, Bo here');

    // Both pages agree on the whole conversation, in the same order, without duplicates.
    const texts = (page) => page.getByTestId('live-messages').locator('.msg-text').allInnerTexts();
    assert.deepEqual(await texts(ada), ['Hello from Ada', 'Hi Ada, Bo here']);
    assert.deepEqual(await texts(bo), ['Hello from Ada', 'Hi Ada, Bo here']);
    // Each page marks only its own message as its own.
    assert.deepEqual(await ada.locator('[data-testid="live-messages"] .msg.own .msg-text').allInnerTexts(), ['Hello from Ada']);

    // Closing the tab ends its socket; the server drops its row and re-announces attendance.
    assertNoPageErrors(bo);
    await bo.close();
    await viewerCount(ada, 1);
    assert.equal(await ada.getByTestId('viewer-list').getByText('Bo').count(), 0);
    assertNoPageErrors(ada);
    await ada.close();
  });

  test('screenshots of the demo page render styled, visible content (desktop and 375 px)', { timeout: 120000 }, async () => {
    const dir = ensureArtifactsDir();
    const stream = `sunday-service-${Date.now()}`;

    // The start screen: both forms, before anything is joined.
    const start = await openPage(browser.context, `${server.origin}/`);
    await start.getByTestId('live-join').waitFor();
    await start.waitForFunction(() => document.querySelector('[data-testid="dev-note"]')?.dataset.dev === 'true');
    await start.screenshot({ path: path.join(dir, 'demo-start.png'), fullPage: true });
    await start.close();

    // A populated page: a second viewer, live chat, a signed-in member with group chat,
    // a reaction and unread counters.
    const other = await openPage(browser.context, liveUrl(stream, 'Grace Hopper'));
    await joined(other);
    const page = await openPage(browser.context, liveUrl(stream, 'Ada'));
    await joined(page);
    await viewerCount(page, 2);
    await sendLive(other, 'Welcome everyone! We start in five minutes.');
    await sendLive(page, 'Hello from the back row 👋');

    await page.getByTestId('member-signin').click();
    await page.getByTestId('member-input').waitFor();
    await page.getByTestId('member-input').fill('Rehearsal moved to 7 pm tonight.');
    await page.getByTestId('member-send').click();
    const groupMessage = page.getByTestId('member-messages').locator('.msg', { hasText: 'Rehearsal moved' });
    await groupMessage.waitFor();
    await groupMessage.hover();
    await groupMessage.getByRole('button', { name: 'React with 👍' }).click();
    await groupMessage.locator('.reaction.mine', { hasText: '1' }).waitFor();
    await page.getByTestId('simulate-pm').click();
    await page.getByTestId('simulate-notification').click();
    await page.waitForFunction(() => ['counter-pms', 'counter-notifications']
      .every((id) => document.querySelector(`[data-testid="${id}"] .badge`)?.dataset.count === '1'));
    await page.mouse.move(0, 0); // no hover toolbar in the picture
    await page.evaluate(() => document.activeElement?.blur());
    // Let the badge animation settle; the wait is on the computed style, not a fixed delay.
    await page.waitForFunction(() => getComputedStyle(document.querySelector('[data-testid="counter-pms"] .badge')).backgroundColor === 'rgb(225, 29, 72)');

    const desktop = path.join(dir, 'demo.png');
    await page.screenshot({ path: desktop, fullPage: true });

    const styles = await page.evaluate(() => {
      const box = (selector) => {
        const el = document.querySelector(selector);
        const r = el.getBoundingClientRect();
        return { width: r.width, height: r.height, top: r.top, left: r.left, bottom: r.bottom, right: r.right };
      };
      const css = (selector, prop) => getComputedStyle(document.querySelector(selector))[prop];
      return {
        live: box('[data-testid="live-panel"]'),
        member: box('[data-testid="member-panel"]'),
        count: box('[data-testid="viewer-count"]'),
        list: box('[data-testid="live-messages"]'),
        composer: box('#live-composer'),
        chip: box('[data-testid="viewer"]'),
        cardBackground: css('.card', 'backgroundColor'),
        cardRadius: css('.card', 'borderTopLeftRadius'),
        bodyBackground: css('body', 'backgroundColor'),
        bodyFont: css('body', 'fontFamily'),
        sendBackground: css('[data-testid="live-send"]', 'backgroundColor'),
        sendColor: css('[data-testid="live-send"]', 'color'),
        liveBadge: css('.live-badge', 'backgroundColor'),
        statusColor: css('[data-testid="live-status"]', 'color'),
        pmBadge: css('[data-testid="counter-pms"] .badge', 'backgroundColor'),
        chips: document.querySelectorAll('[data-testid="viewer"]').length,
        scrollWidth: document.documentElement.scrollWidth,
        viewportWidth: window.innerWidth,
      };
    });
    for (const name of ['live', 'member', 'count', 'list', 'composer', 'chip']) {
      assert.ok(styles[name].width > 0 && styles[name].height > 0, `${name} has a size: ${JSON.stringify(styles[name])}`);
    }
    assert.equal(styles.cardBackground, 'rgb(255, 255, 255)');
    assert.equal(styles.cardRadius, '16px');
    assert.equal(styles.bodyBackground, 'rgb(245, 246, 250)');
    assert.match(styles.bodyFont, /system-ui/);
    assert.equal(styles.sendBackground, 'rgb(79, 70, 229)');
    assert.equal(styles.sendColor, 'rgb(255, 255, 255)');
    assert.equal(styles.liveBadge, 'rgb(225, 29, 72)');
    assert.equal(styles.statusColor, 'rgb(22, 163, 74)', 'the connection pill is green when live');
    assert.equal(styles.pmBadge, 'rgb(225, 29, 72)', 'an unread badge turns red');
    assert.equal(styles.chips, 2);
    assert.ok(Math.abs(styles.live.top - styles.member.top) < 1, 'desktop: the two panels sit side by side');
    assert.ok(styles.scrollWidth <= styles.viewportWidth, 'no horizontal scrolling on desktop');
    assert.match(await page.getByTestId('viewer-count').innerText(), /^2 watching$/);

    // Phone width: the same page must stack its panels and never scroll sideways.
    await page.setViewportSize({ width: 375, height: 812 });
    await page.getByTestId('live-messages').evaluate((list) => { list.scrollTop = list.scrollHeight; });
    const phone = path.join(dir, 'demo-375.png');
    await page.screenshot({ path: phone, fullPage: true });
    const narrow = await page.evaluate(() => {
      const r = (s) => document.querySelector(s).getBoundingClientRect();
      return {
        live: r('[data-testid="live-panel"]').toJSON(),
        member: r('[data-testid="member-panel"]').toJSON(),
        input: r('[data-testid="live-input"]').toJSON(),
        send: r('[data-testid="live-send"]').toJSON(),
        scrollWidth: document.documentElement.scrollWidth,
      };
    });
    assert.ok(narrow.scrollWidth <= 375, `no horizontal scrolling at 375 px (scrollWidth ${narrow.scrollWidth})`);
    assert.ok(narrow.member.top >= narrow.live.bottom, 'phone: the panels are stacked');
    assert.ok(narrow.live.right <= 375 && narrow.live.left >= 0, 'phone: the card fits the screen');
    assert.ok(narrow.input.width >= 150, `phone: the message box stays usable (${narrow.input.width}px)`);
    assert.ok(narrow.send.right <= narrow.live.right, 'phone: the send button is inside the card');

    for (const file of [desktop, phone, path.join(dir, 'demo-start.png')]) {
      assert.ok(statSync(file).size > 10000, `${file} is a real screenshot`);
    }
    assertNoPageErrors(page, other);
    await page.close();
    await other.close();
  });

  test('a restart of the service under an open page: it reconnects, re-joins and catches up', { timeout: 120000 }, async () => {
    const stream = `outage-${Date.now()}`;
    const page = await openPage(browser.context, liveUrl(stream, 'Ada'));
    await joined(page);
    await viewerCount(page, 1);
    await sendLive(page, 'Before the restart');
    const conversationId = await page.locator('#live-room').getAttribute('data-conversation-id');
    const firstSocket = await page.getByTestId('live-status').getAttribute('data-socket-id');
    assert.ok(firstSocket);

    const requests = [];
    page.on('request', (request) => requests.push({ method: request.method(), url: request.url(), body: request.postData() }));

    // The service goes away: the page sees its socket close (1001) and starts backing off.
    await server.stop();
    await page.waitForFunction(() => document.querySelector('[data-testid="live-status"]')?.dataset.state !== 'open');

    // Keep the page offline while the service comes back and a message is posted, so that the
    // message can only reach the page through the catch-up (frames are at-most-once, §5.2).
    await browser.context.setOffline(true);
    await server.start();
    const [missed] = await server.rest('POST', '/messages/send', {
      body: [{ conversationId, content: 'Sent during the outage', displayName: 'Grace' }],
    });
    assert.equal(missed.content, 'Sent during the outage');
    assert.equal(await page.getByTestId('live-messages').getByText('Sent during the outage').count(), 0);

    // Back online: the `online` event makes the page reconnect at once instead of waiting out
    // its backoff.
    await browser.context.setOffline(false);
    await page.waitForFunction((old) => {
      const status = document.querySelector('[data-testid="live-status"]');
      return status?.dataset.state === 'open' && status.dataset.socketId && status.dataset.socketId !== old;
    }, firstSocket, { timeout: 45000 });
    const secondSocket = await page.getByTestId('live-status').getAttribute('data-socket-id');

    await liveMessage(page, 'Sent during the outage');
    await viewerCount(page, 1); // re-joined: the new socket's attendance arrived

    // The page re-joined with the new socket id, then caught up since its newest message.
    const joinIndex = requests.findIndex((r) => r.method === 'POST' && r.url.endsWith('/messaging/connections') && r.body?.includes(secondSocket));
    const catchupIndex = requests.findIndex((r) => r.method === 'GET' && r.url.includes(`/messaging/messages/catchup/${CHURCH}/${conversationId}?since=`));
    assert.ok(joinIndex >= 0, 're-join posted with the new socket id');
    assert.ok(catchupIndex > joinIndex, 'catch-up after the re-join');

    // Live delivery works on the new socket too, and nothing was duplicated.
    await server.rest('POST', '/messages/send', { body: [{ conversationId, content: 'After the restart', displayName: 'Grace' }] });
    await liveMessage(page, 'After the restart');
    assert.deepEqual(
      await page.getByTestId('live-messages').locator('.msg-text').allInnerTexts(),
      ['Before the restart', 'Sent during the outage', 'After the restart'],
    );
    assertNoPageErrors(page);
    await page.close();
  });
});
