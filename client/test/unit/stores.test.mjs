import { describe, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  ConversationStore, NotificationService, PresenceStore, SocketHelper, SubscriptionManager, groupViewers,
} from '../../messaging.js';
import { FakeClock, fakeWebSockets, fakeApi, flush, message, connected, reconnect } from './fakes.mjs';

const CONV = 'CONV0000001';
const ROOM = { churchId: 'C1', conversationId: CONV };

function setup({ api = fakeApi(), personId = 'P1' } = {}) {
  const clock = new FakeClock();
  const ws = fakeWebSockets();
  const errors = [];
  const onError = (e) => errors.push(e);
  const socket = new SocketHelper({
    url: 'ws://test.invalid/', WebSocket: ws.FakeWebSocket, clock, random: () => 0,
    windowTarget: null, documentTarget: null, onError,
  });
  const subscriptions = new SubscriptionManager({ socket, api, clock, onError });
  const conversations = new ConversationStore({ socket, subscriptions, api, personId, onError });
  const presence = new PresenceStore({ socket, onError });
  const notifications = new NotificationService({ socket, subscriptions, api, onError });
  return { clock, ws, socket, subscriptions, conversations, presence, notifications, api, errors };
}


const ids = (messages) => messages.map((m) => m.id);

describe('ConversationStore', () => {
  test('open joins the room first, then hydrates', async () => {
    const api = fakeApi({ catchup: () => [message('M2', '2026-05-04T12:00:02.000Z'), message('M1', '2026-05-04T12:00:01.000Z')] });
    const t = setup({ api });
    await connected(t);
    const messages = await t.conversations.open({ ...ROOM, displayName: 'Ada' });
    assert.deepEqual(t.api.calls.map((c) => c.name), ['joinRooms', 'catchup']);
    assert.deepEqual(t.api.callsOf('catchup'), [['C1', CONV, null]]);
    assert.deepEqual(ids(messages), ['M1', 'M2'], 'ordered by timeSent');
    assert.deepEqual(messages[0].reactions, []);
  });

  test('opening twice holds one room reference; the last close leaves', async () => {
    const t = setup();
    await connected(t);
    await Promise.all([t.conversations.open(ROOM), t.conversations.open(ROOM)]);
    assert.equal(t.api.callsOf('joinRooms').length, 1);
    assert.equal(t.api.callsOf('catchup').length, 1);
    await t.conversations.close(CONV);
    assert.equal(t.subscriptions.isJoined('C1', CONV), true);
    const left = t.conversations.close(CONV);
    t.clock.advance(250);
    assert.equal(await left, true);
    assert.deepEqual(t.api.callsOf('leaveRoom'), [['C1', CONV, 'SOCKET00001']]);
    assert.deepEqual(t.conversations.getMessages(CONV), []);
  });

  test('message frames merge by id: new ones are added in order, an edit replaces', async () => {
    const t = setup();
    await connected(t);
    await t.conversations.open(ROOM);
    const seen = [];
    t.conversations.subscribe(CONV, (messages) => seen.push(messages.map((m) => `${m.id}:${m.content}`)));
    t.ws.last.push('message', message('M2', '2026-05-04T12:00:02.000Z'), { conversationId: CONV });
    t.ws.last.push('message', message('M1', '2026-05-04T12:00:01.000Z'), { conversationId: CONV });
    t.ws.last.push('message', message('M2', '2026-05-04T12:00:02.000Z', {
      content: 'edited', timeUpdated: '2026-05-04T12:05:00.000Z',
    }), { conversationId: CONV });
    assert.deepEqual(seen, [
      ['M2:content of M2'],
      ['M1:content of M1', 'M2:content of M2'],
      ['M1:content of M1', 'M2:edited'],
    ]);
    assert.equal(t.conversations.getMessages(CONV).length, 2);
  });

  test('frames of conversations that are not open are ignored', async () => {
    const t = setup();
    await connected(t);
    await t.conversations.open(ROOM);
    t.ws.last.push('message', message('X1', '2026-05-04T12:00:00.000Z', { conversationId: 'OTHER000001' }));
    assert.deepEqual(t.conversations.getMessages('OTHER000001'), []);
    assert.deepEqual(t.conversations.getMessages(CONV), []);
  });

  test('a REST answer older than a live edit does not undo it', async () => {
    let release;
    const api = fakeApi({ catchup: () => new Promise((resolve) => { release = resolve; }) });
    const t = setup({ api });
    await connected(t);
    const opened = t.conversations.open(ROOM);
    await flush();
    t.ws.last.push('message', message('M1', '2026-05-04T12:00:01.000Z', { content: 'edited', timeUpdated: '2026-05-04T12:01:00.000Z' }));
    release([message('M1', '2026-05-04T12:00:01.000Z', { content: 'original' }), message('M0', '2026-05-04T12:00:00.000Z')]);
    const messages = await opened;
    assert.deepEqual(messages.map((m) => m.content), ['content of M0', 'edited']);
  });

  test('deleteMessage removes the message, and a late REST answer does not bring it back', async () => {
    let release;
    const api = fakeApi({ catchup: () => new Promise((resolve) => { release = resolve; }) });
    const t = setup({ api });
    await connected(t);
    const opened = t.conversations.open(ROOM);
    await flush();
    t.ws.last.push('message', message('M1', '2026-05-04T12:00:01.000Z'));
    t.ws.last.push('message', message('M2', '2026-05-04T12:00:02.000Z'));
    t.ws.last.push('deleteMessage', { id: 'M1', conversationId: CONV });
    assert.deepEqual(ids(t.conversations.getMessages(CONV)), ['M2']);
    release([message('M1', '2026-05-04T12:00:01.000Z'), message('M2', '2026-05-04T12:00:02.000Z')]);
    assert.deepEqual(ids(await opened), ['M2']);
  });

  test('reactions: counted per emoji, mine for the signed-in person, removed at zero', async () => {
    const t = setup({ personId: 'P1' });
    await connected(t);
    await t.conversations.open(ROOM);
    t.ws.last.push('message', message('M1', '2026-05-04T12:00:01.000Z'));
    const react = (personId, emoji, added) => t.ws.last.push('reaction', { messageId: 'M1', conversationId: CONV, personId, emoji, added });
    react('P2', '👍', true);
    react('P1', '👍', true);
    react('P1', '❤️', true);
    assert.deepEqual(t.conversations.getMessages(CONV)[0].reactions, [
      { emoji: '👍', count: 2, mine: true }, { emoji: '❤️', count: 1, mine: true },
    ]);
    react('P1', '👍', false);
    react('P1', '❤️', false);
    assert.deepEqual(t.conversations.getMessages(CONV)[0].reactions, [{ emoji: '👍', count: 1, mine: false }]);
    // A reaction to an unknown message is ignored; deleting the message drops its reactions.
    t.ws.last.push('reaction', { messageId: 'NOPE', conversationId: CONV, personId: 'P2', emoji: '👍', added: true });
    t.ws.last.push('deleteMessage', { id: 'M1', conversationId: CONV });
    assert.deepEqual(t.conversations.getMessages(CONV), []);
  });

  test('react() does not count the response, only the frame', async () => {
    const t = setup();
    await connected(t);
    await t.conversations.open(ROOM);
    t.ws.last.push('message', message('M1', '2026-05-04T12:00:01.000Z'));
    await t.conversations.react('M1', '👍');
    assert.deepEqual(t.conversations.getMessages(CONV)[0].reactions, []);
    assert.deepEqual(t.api.callsOf('react'), [['M1', '👍']]);
  });

  test('send merges the stored message at once; its frame later is a no-op', async () => {
    const stored = message('M9', '2026-05-04T12:00:09.000Z', { content: 'hi' });
    const api = fakeApi({ sendMessages: () => [stored] });
    const t = setup({ api });
    await connected(t);
    await t.conversations.open(ROOM);
    let changes = 0;
    t.conversations.subscribe(CONV, () => { changes += 1; });
    await t.conversations.send({ ...ROOM, content: 'hi', displayName: 'Ada' });
    t.ws.last.push('message', stored);
    assert.deepEqual(ids(t.conversations.getMessages(CONV)), ['M9']);
    assert.deepEqual(t.api.callsOf('sendMessages'), [[[{ ...ROOM, content: 'hi', displayName: 'Ada', messageType: undefined }]]]);
    assert.equal(changes, 2, 'the frame replaces by id without adding a second copy');
  });

  test('REST errors surface to the caller', async () => {
    const failure = Object.assign(new Error('Anonymous posting not allowed'), { status: 401 });
    const api = fakeApi({ sendMessages: () => { throw failure; }, catchup: () => { throw failure; } });
    const t = setup({ api });
    await connected(t);
    await assert.rejects(t.conversations.open(ROOM), failure);
    t.clock.advance(1000);
    await flush();
    assert.deepEqual(t.subscriptions.rooms(), [], 'a failed open does not keep the room');
    await assert.rejects(t.conversations.send({ ...ROOM, content: 'x' }), failure);
  });

  test('after a reconnect: re-join, then catch up since the newest message', async () => {
    let catchups = 0;
    const api = fakeApi({
      catchup: (churchId, conversationId, since) => {
        catchups += 1;
        if (catchups === 1) return [message('M1', '2026-05-04T12:00:01.000Z'), message('M2', '2026-05-04T12:00:02.000Z')];
        assert.equal(since, '2026-05-04T12:00:03.000Z');
        // Inclusive: the newest known message comes back too and must not be duplicated.
        return [message('M3', '2026-05-04T12:00:03.000Z'), message('M4', '2026-05-04T12:00:04.000Z')];
      },
    });
    const t = setup({ api });
    await connected(t, 'SOCKET00001');
    await t.conversations.open({ ...ROOM, displayName: 'Ada' });
    t.ws.last.push('message', message('M3', '2026-05-04T12:00:03.000Z'));
    const seen = [];
    t.conversations.subscribe(CONV, (messages) => seen.push(ids(messages)));
    await reconnect(t, 'SOCKET00002', 5);
    const order = t.api.calls.map((c) => `${c.name}:${c.args[0]?.[0]?.socketId ?? c.args[2] ?? ''}`);
    assert.deepEqual(order, [
      'joinRooms:SOCKET00001', 'catchup:', 'joinRooms:SOCKET00002', 'catchup:2026-05-04T12:00:03.000Z',
    ], 're-join is posted before the catch-up');
    assert.deepEqual(ids(t.conversations.getMessages(CONV)), ['M1', 'M2', 'M3', 'M4']);
    assert.deepEqual(seen, [['M1', 'M2', 'M3', 'M4']]);
  });

  test('a catch-up of an empty conversation fetches everything (no client clock involved)', async () => {
    const t = setup();
    await connected(t, 'SOCKET00001');
    await t.conversations.open(ROOM);
    await reconnect(t, 'SOCKET00002', 5);
    assert.deepEqual(t.api.callsOf('catchup'), [['C1', CONV, null], ['C1', CONV, null]]);
  });

  test('a failed catch-up goes to onError, not to an unhandled rejection', async () => {
    let n = 0;
    const api = fakeApi({ catchup: () => { n += 1; if (n > 1) throw new Error('503'); return []; } });
    const t = setup({ api });
    await connected(t, 'SOCKET00001');
    await t.conversations.open(ROOM);
    await reconnect(t, 'SOCKET00002', 5);
    assert.equal(t.errors.length, 1);
    assert.equal(t.errors[0].message, '503');
  });

  test('unsubscribe stops notifications', async () => {
    const t = setup();
    await connected(t);
    await t.conversations.open(ROOM);
    let calls = 0;
    const off = t.conversations.subscribe(CONV, () => { calls += 1; });
    t.ws.last.push('message', message('M1', '2026-05-04T12:00:01.000Z'));
    off();
    t.ws.last.push('message', message('M2', '2026-05-04T12:00:02.000Z'));
    assert.equal(calls, 1);
  });
});

describe('PresenceStore', () => {
  const attendance = (viewers, totalViewers = viewers.length) => ({ conversationId: CONV, viewers, totalViewers });

  test('keeps the latest attendance and does not re-announce an identical one', async () => {
    const t = setup();
    await connected(t);
    const seen = [];
    t.presence.subscribe('C1', CONV, (s) => seen.push(s.totalViewers));
    const one = attendance([{ id: 'R1', displayName: 'Ada' }]);
    t.ws.last.push('attendance', one, { conversationId: CONV });
    t.ws.last.push('attendance', structuredClone(one), { conversationId: CONV });
    t.ws.last.push('attendance', attendance([{ id: 'R1', displayName: 'Ada' }, { id: 'R2', displayName: 'Bo' }]), { conversationId: CONV });
    t.ws.last.push('attendance', attendance([{ id: 'R1', displayName: 'Ada' }]), { conversationId: CONV });
    assert.deepEqual(seen, [1, 2, 1]);
    assert.equal(t.presence.get('C1', CONV).viewers.length, 1);
  });

  test('a renamed viewer is a new snapshot', async () => {
    const t = setup();
    await connected(t);
    const seen = [];
    t.presence.subscribe('C1', CONV, (s) => seen.push(s.groups));
    t.ws.last.push('attendance', attendance([{ id: 'R1', displayName: 'Ada' }]));
    t.ws.last.push('attendance', attendance([{ id: 'R1', displayName: 'Ada L.' }]));
    assert.deepEqual(seen, [[{ displayName: 'Ada', count: 1 }], [{ displayName: 'Ada L.', count: 1 }]]);
  });

  test('viewers are grouped by display name with counts, and capped rosters report the rest', async () => {
    const t = setup();
    await connected(t);
    t.ws.last.push('attendance', attendance([
      { id: 'R0', displayName: null },
      { id: 'R1', displayName: 'Anonymous' },
      { id: 'R2', displayName: 'Ada' },
      { id: 'R3', displayName: 'Ada' },
      { id: 'R4', displayName: 'bo' },
    ], 7));
    const snapshot = t.presence.get('C1', CONV);
    assert.deepEqual(snapshot.groups, [
      { displayName: 'Anonymous', count: 2 }, { displayName: 'Ada', count: 2 }, { displayName: 'bo', count: 1 },
    ]);
    assert.equal(snapshot.totalViewers, 7);
    assert.equal(snapshot.hidden, 2);
    assert.deepEqual(groupViewers([]), []);
  });

  test('rooms are kept per church', async () => {
    const t = setup();
    await connected(t);
    const data = { conversationId: 'content-group-G1', viewers: [{ id: 'R1', displayName: 'A' }], totalViewers: 1 };
    t.ws.last.push('attendance', data, { churchId: 'C1', conversationId: 'content-group-G1' });
    assert.equal(t.presence.get('C1', 'content-group-G1').totalViewers, 1);
    assert.equal(t.presence.get('C2', 'content-group-G1'), null);
  });

  test('a late subscriber gets the current snapshot at once', async () => {
    const t = setup();
    await connected(t);
    t.ws.last.push('attendance', attendance([{ id: 'R1', displayName: 'Ada' }]));
    const seen = [];
    t.presence.subscribe('C1', CONV, (s) => seen.push(s.totalViewers));
    assert.deepEqual(seen, [1]);
  });
});

describe('NotificationService', () => {
  test('initialize joins alerts and loads the counts', async () => {
    const api = fakeApi({ unreadCount: () => ({ notificationCount: 2, pmCount: 1 }) });
    const t = setup({ api });
    await connected(t);
    const counts = await t.notifications.initialize({ churchId: 'C1', personId: 'P1' });
    assert.deepEqual(counts, { notificationCount: 2, pmCount: 1 });
    assert.deepEqual(t.api.callsOf('joinRooms')[0][0], [{ churchId: 'C1', conversationId: 'alerts', displayName: '', socketId: 'SOCKET00001' }]);
    assert.deepEqual(t.api.calls.map((c) => c.name), ['joinRooms', 'unreadCount']);
  });

  test('privateMessage and notification frames set the counts; unchanged counts are not announced', async () => {
    const t = setup();
    await connected(t);
    await t.notifications.initialize({ churchId: 'C1', personId: 'P1' });
    const seen = [];
    t.notifications.subscribe((c) => seen.push(c));
    t.ws.last.push('privateMessage', { counts: { notificationCount: 0, pmCount: 1 } }, { conversationId: 'PMCONV00001' });
    t.ws.last.push('privateMessage', { counts: { notificationCount: 0, pmCount: 1 } }, { conversationId: 'PMCONV00001' });
    t.ws.last.push('notification', { counts: { notificationCount: 3, pmCount: 1 } }, { conversationId: 'alert' });
    assert.deepEqual(seen, [{ notificationCount: 0, pmCount: 1 }, { notificationCount: 3, pmCount: 1 }]);
    assert.deepEqual(t.notifications.getCounts(), { notificationCount: 3, pmCount: 1 });
  });

  test('after a reconnect it re-joins alerts, then refetches unreadCount', async () => {
    let n = 0;
    const api = fakeApi({ unreadCount: () => (++n === 1 ? { notificationCount: 0, pmCount: 0 } : { notificationCount: 4, pmCount: 2 }) });
    const t = setup({ api });
    await connected(t, 'SOCKET00001');
    await t.notifications.initialize({ churchId: 'C1', personId: 'P1' });
    const seen = [];
    t.notifications.subscribe((c) => seen.push(c));
    await reconnect(t, 'SOCKET00002', 5);
    assert.deepEqual(t.api.calls.map((c) => c.name), ['joinRooms', 'unreadCount', 'joinRooms', 'unreadCount']);
    assert.equal(t.api.callsOf('joinRooms')[1][0][0].socketId, 'SOCKET00002');
    assert.deepEqual(seen, [{ notificationCount: 4, pmCount: 2 }]);
  });

  test('a refetch overtaken by a frame keeps the frame', async () => {
    let release;
    let n = 0;
    const api = fakeApi({
      unreadCount: () => (++n === 1 ? { notificationCount: 0, pmCount: 0 } : new Promise((resolve) => { release = resolve; })),
    });
    const t = setup({ api });
    await connected(t);
    await t.notifications.initialize({ churchId: 'C1', personId: 'P1' });
    const refreshing = t.notifications.refresh();
    await flush();
    t.ws.last.push('notification', { counts: { notificationCount: 5, pmCount: 0 } }, { conversationId: 'alert' });
    release({ notificationCount: 4, pmCount: 0 });
    assert.deepEqual(await refreshing, { notificationCount: 5, pmCount: 0 });
  });

  test('needs a signed-in person; REST errors surface', async () => {
    const failure = Object.assign(new Error('Unauthorized'), { status: 401 });
    const api = fakeApi({ joinRooms: () => { throw failure; } });
    const t = setup({ api });
    await connected(t);
    await assert.rejects(t.notifications.initialize({ churchId: 'C1' }), TypeError);
    await assert.rejects(t.notifications.initialize({ churchId: 'C1', personId: 'P1' }), failure);
    // Counts frames are ignored while not initialized.
    t.ws.last.push('notification', { counts: { notificationCount: 9, pmCount: 9 } });
    assert.deepEqual(t.notifications.getCounts(), { notificationCount: 0, pmCount: 0 });
  });

  test('cleanup leaves alerts and resets the counts', async () => {
    const api = fakeApi({ unreadCount: () => ({ notificationCount: 1, pmCount: 1 }) });
    const t = setup({ api });
    await connected(t);
    await t.notifications.initialize({ churchId: 'C1', personId: 'P1' });
    const done = t.notifications.cleanup();
    t.clock.advance(250);
    await done;
    assert.deepEqual(t.notifications.getCounts(), { notificationCount: 0, pmCount: 0 });
    assert.deepEqual(t.api.callsOf('leaveRoom'), [['C1', 'alerts', 'SOCKET00001']]);
  });
});
