// Positions and resume (PROTOCOL.md §5.6) in the client: the socket opts in, each room keeps
// `{epoch, seq}`, a re-join after a reconnect sends `since`, replays are applied once, and a
// gap (or a `seq` that skips ahead) is caught up through REST and announced.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  ConversationStore, NotificationService, SocketHelper, SubscriptionManager, withPositions,
} from '../../messaging.js';
import { FakeClock, fakeWebSockets, fakeApi, handshake, flush, message, connected, reconnect } from './fakes.mjs';

const CONV = 'CONV0000001';
const ROOM = { churchId: 'C1', conversationId: CONV };
const E1 = 'EPOCH-1';
const E2 = 'EPOCH-2';

/**
 * A fake API whose join rows carry `position` the way a server with positions answers:
 * `positionOf(item)` gives the room's last seq (or `null` for a server without positions).
 */
function positionsApi({ positionOf = () => ({ epoch: E1, seq: 0 }), ...overrides } = {}) {
  let rowSeq = 0;
  return fakeApi({
    joinRooms: (items) => items.map((item) => {
      const { since, ...rest } = item;
      const position = positionOf(item);
      return {
        id: `ROW${String(++rowSeq).padStart(8, '0')}`, personId: null, timeJoined: '2026-05-04T12:00:00.000Z',
        ipAddress: null, ...rest, ...(position ? { position } : {}),
      };
    }),
    ...overrides,
  });
}

function setup({ api = positionsApi(), positions, personId = 'P1' } = {}) {
  const clock = new FakeClock();
  const ws = fakeWebSockets();
  const errors = [];
  const onError = (e) => errors.push(e);
  const socket = new SocketHelper({
    url: 'ws://test.invalid/', WebSocket: ws.FakeWebSocket, clock, random: () => 0,
    windowTarget: null, documentTarget: null, onError, positions,
  });
  const subscriptions = new SubscriptionManager({ socket, api, clock, onError });
  const conversations = new ConversationStore({ socket, subscriptions, api, personId, onError });
  const notifications = new NotificationService({ socket, subscriptions, api, onError });
  const events = { gaps: [], resumes: [], rejoins: [], storeGaps: [] };
  subscriptions.onGap((e) => events.gaps.push(e));
  subscriptions.onResume((e) => events.resumes.push(e));
  subscriptions.onRejoin((e) => events.rejoins.push(e));
  conversations.onGap((e) => events.storeGaps.push(e));
  return { clock, ws, socket, subscriptions, conversations, notifications, api, errors, events };
}


/** A frame as a server with positions sends it: the four keys, then `seq`. */
function seqFrame(ws, action, data, seq, { churchId = 'C1', conversationId = CONV } = {}) {
  ws.frame({ churchId, conversationId, action, data, seq });
}

function gapFrame(ws, reason, epoch, seq, { churchId = 'C1', conversationId = CONV } = {}) {
  ws.frame({ churchId, conversationId, action: 'gap', data: { reason, epoch, seq } });
}

const msg = (n) => message(`M${n}`, `2026-05-04T12:00:0${n}.000Z`);
const ids = (messages) => messages.map((m) => m.id);
const joinItems = (t) => t.api.callsOf('joinRooms').map(([items]) => items[0]);

describe('withPositions', () => {
  test('adds positions=1 to the query and leaves the rest of the URL alone', () => {
    assert.equal(withPositions('ws://h/'), 'ws://h/?positions=1');
    assert.equal(withPositions('ws://h:8087'), 'ws://h:8087?positions=1');
    assert.equal(withPositions('wss://h/socket?a=b'), 'wss://h/socket?a=b&positions=1');
    assert.equal(withPositions('wss://h/socket?'), 'wss://h/socket?positions=1');
    assert.equal(withPositions('wss://h/?a=b#x'), 'wss://h/?a=b&positions=1#x');
    assert.equal(withPositions('wss://h/?positions=1'), 'wss://h/?positions=1', 'not twice');
    assert.equal(withPositions('wss://h/?a=1&positions=0'), 'wss://h/?a=1&positions=0', 'an explicit choice wins');
  });
});

describe('positions off', () => {
  test('the socket URL is exactly the one given and joins never carry since', async () => {
    const t = setup({ positions: false });
    await connected(t);
    assert.equal(t.ws.last.url, 'ws://test.invalid/');
    assert.equal(t.socket.positions, false);
    await t.conversations.open(ROOM);
    seqFrame(t.ws.last, 'message', msg(1), 7); // a server would not send seq; it is not used either
    assert.equal(t.subscriptions.position('C1', CONV), null, 'a row position is ignored');
    await reconnect(t, 'SOCKET00002', 6);
    assert.deepEqual(joinItems(t), [
      { ...ROOM, displayName: '', socketId: 'SOCKET00001' },
      { ...ROOM, displayName: '', socketId: 'SOCKET00002' },
    ], 'the very same join bodies as before positions');
    assert.equal(t.events.rejoins[0].resumed, false);
    // Today's behaviour: the re-join is followed by a catch-up since the newest message.
    assert.deepEqual(t.api.callsOf('catchup'), [['C1', CONV, null], ['C1', CONV, '2026-05-04T12:00:01.000Z']]);
  });

  test('a server without positions (rows without position): at-most-once as before', async () => {
    const t = setup({ api: positionsApi({ positionOf: () => null }) });
    await connected(t);
    assert.equal(t.ws.last.url, 'ws://test.invalid/?positions=1');
    await t.conversations.open(ROOM);
    assert.equal(t.subscriptions.position('C1', CONV), null);
    await reconnect(t, 'SOCKET00002', 6);
    assert.equal(joinItems(t)[1].since, undefined);
    assert.equal(t.events.rejoins[0].resumed, false);
    assert.equal(t.api.callsOf('catchup').length, 2, 'caught up after the re-join');
  });
});

describe('positions on', () => {
  test('the join row sets the position; each frame of the room advances it', async () => {
    const t = setup({ api: positionsApi({ positionOf: () => ({ epoch: E1, seq: 4 }) }) });
    await connected(t);
    await t.conversations.open(ROOM);
    assert.deepEqual(t.subscriptions.position('C1', CONV), { epoch: E1, seq: 4 });
    seqFrame(t.ws.last, 'message', msg(1), 5);
    seqFrame(t.ws.last, 'reaction', { messageId: 'M1', conversationId: CONV, personId: 'P2', emoji: '👍', added: true }, 6);
    // attendance and blockedIp carry no seq (§5.6) and change nothing.
    t.ws.last.push('attendance', { conversationId: CONV, viewers: [], totalViewers: 0 }, { conversationId: CONV });
    assert.deepEqual(t.subscriptions.position('C1', CONV), { epoch: E1, seq: 6 });
    assert.deepEqual(t.conversations.getMessages(CONV)[0].reactions, [{ emoji: '👍', count: 1, mine: false }]);
    assert.deepEqual(t.events.gaps, []);
  });

  test('frames that overtake the first join response still count', async () => {
    let answer;
    const api = positionsApi({ positionOf: () => ({ epoch: E1, seq: 2 }) });
    const joinRooms = api.joinRooms;
    api.joinRooms = (items) => new Promise((resolve) => { answer = () => resolve(joinRooms(items)); });
    const t = setup({ api });
    await connected(t);
    const joined = t.subscriptions.joinRoom(ROOM);
    await flush();
    seqFrame(t.ws.last, 'message', msg(3), 3);
    seqFrame(t.ws.last, 'message', msg(4), 4);
    answer();
    await joined;
    assert.deepEqual(t.subscriptions.position('C1', CONV), { epoch: E1, seq: 4 });
    seqFrame(t.ws.last, 'message', msg(5), 5);
    assert.deepEqual(t.events.gaps, [], 'no jump: 5 follows 4');
  });

  test('a re-join sends since; the replay is applied once, a repeated replay is dropped', async () => {
    let last = 0;
    const t = setup({ api: positionsApi({ positionOf: () => ({ epoch: E1, seq: last }) }) });
    await connected(t);
    await t.conversations.open(ROOM);
    seqFrame(t.ws.last, 'message', msg(1), 1);
    seqFrame(t.ws.last, 'message', msg(2), 2);

    // Two frames are published while the socket is down; the re-join resumes from seq 2.
    last = 4;
    assert.deepEqual(t.subscriptions.position('C1', CONV), { epoch: E1, seq: 2 });
    t.ws.last.drop();
    t.clock.advance(t.socket.retryAt - t.clock.now());
    handshake(t.ws.last, 'SOCKET00002');
    await flush(6);
    assert.deepEqual(joinItems(t)[1], { ...ROOM, displayName: '', socketId: 'SOCKET00002', since: { epoch: E1, seq: 2 } });
    assert.equal(t.events.rejoins[0].resumed, true);
    assert.deepEqual(t.events.resumes, [], 'the replay has not arrived yet');

    // The replay (a reaction among it, which must count once), then the same replay again, as
    // after a join repeated with the same since.
    const replay = () => {
      seqFrame(t.ws.last, 'message', msg(3), 3);
      seqFrame(t.ws.last, 'reaction', { messageId: 'M3', conversationId: CONV, personId: 'P2', emoji: '🙏', added: true }, 4);
    };
    replay();
    replay();
    seqFrame(t.ws.last, 'message', msg(5), 5);
    assert.deepEqual(ids(t.conversations.getMessages(CONV)), ['M1', 'M2', 'M3', 'M5']);
    assert.deepEqual(t.conversations.getMessages(CONV)[2].reactions, [{ emoji: '🙏', count: 1, mine: false }]);
    assert.deepEqual(t.subscriptions.position('C1', CONV), { epoch: E1, seq: 5 });
    assert.deepEqual(t.events.resumes.map(({ conversationId, replayed, seq }) => ({ conversationId, replayed, seq })),
      [{ conversationId: CONV, replayed: 2, seq: 4 }]);
    assert.deepEqual(t.api.callsOf('catchup'), [['C1', CONV, null]], 'a resume fetches nothing');
    assert.deepEqual(t.events.gaps, []);
  });

  test('a replay that arrives before the re-join response resumes as soon as the row is in', async () => {
    let last = 1;
    let hold = false;
    let answer;
    const api = positionsApi({ positionOf: () => ({ epoch: E1, seq: last }) });
    const joinRooms = api.joinRooms;
    api.joinRooms = (items) => (hold
      ? new Promise((resolve) => { answer = () => resolve(joinRooms(items)); })
      : joinRooms(items));
    const t = setup({ api });
    await connected(t);
    await t.conversations.open(ROOM);
    last = 3;
    hold = true;
    await reconnect(t, 'SOCKET00002', 6);
    assert.ok(answer, 'the re-join is posted, its answer held back');
    seqFrame(t.ws.last, 'message', msg(2), 2);
    seqFrame(t.ws.last, 'message', msg(3), 3);
    assert.deepEqual(t.events.resumes, []);
    answer();
    await flush(6);
    assert.deepEqual(t.events.resumes.map((e) => e.replayed), [2]);
    assert.deepEqual(ids(t.conversations.getMessages(CONV)), ['M2', 'M3']);
    assert.deepEqual(t.subscriptions.position('C1', CONV), { epoch: E1, seq: 3 });
  });

  test('nothing missed: the resume is announced with 0 replayed frames', async () => {
    const t = setup({ api: positionsApi({ positionOf: () => ({ epoch: E1, seq: 7 }) }) });
    await connected(t);
    await t.conversations.open(ROOM);
    await reconnect(t, 'SOCKET00002', 6);
    assert.deepEqual(t.events.resumes.map((e) => e.replayed), [0]);
    assert.equal(t.api.callsOf('catchup').length, 1);
  });

  test('a gap frame after a restart: catch-up through REST, the new position, one event', async () => {
    let epoch = E1;
    const api = positionsApi({
      positionOf: () => ({ epoch, seq: 0 }),
      catchup: (churchId, conversationId, since) => (since ? [msg(1), msg(2), msg(3)] : [msg(1)]),
    });
    const t = setup({ api });
    await connected(t);
    await t.conversations.open(ROOM);
    seqFrame(t.ws.last, 'message', msg(1), 1);

    // The service restarts: a new epoch. Its gap frame arrives before the join response.
    epoch = E2;
    let answer;
    const joinRooms = api.joinRooms;
    api.joinRooms = (items) => new Promise((resolve) => { answer = () => resolve(joinRooms(items)); });
    await reconnect(t, 'SOCKET00002', 6);
    gapFrame(t.ws.last, 'epoch', E2, 0);
    answer();
    await flush(8);
    assert.deepEqual(joinItems(t)[1].since, { epoch: E1, seq: 1 });
    assert.deepEqual(t.api.callsOf('catchup'), [['C1', CONV, null], ['C1', CONV, '2026-05-04T12:00:01.000Z']],
      'one catch-up, since the newest message held');
    assert.deepEqual(t.events.gaps.map(({ reason, epoch: e, seq, previous }) => ({ reason, e, seq, previous })),
      [{ reason: 'epoch', e: E2, seq: 0, previous: { epoch: E1, seq: 1 } }]);
    assert.deepEqual(t.events.storeGaps.map((e) => [e.conversationId, e.reason, e.refetched]), [[CONV, 'epoch', 2]]);
    assert.deepEqual(ids(t.conversations.getMessages(CONV)), ['M1', 'M2', 'M3'], 'merged by id, no duplicate');
    assert.deepEqual(t.subscriptions.position('C1', CONV), { epoch: E2, seq: 0 });
    assert.deepEqual(t.events.resumes, []);

    // Frames of the new epoch go on from the gap's position.
    seqFrame(t.ws.last, 'message', msg(4), 1);
    assert.deepEqual(ids(t.conversations.getMessages(CONV)), ['M1', 'M2', 'M3', 'M4']);
    assert.deepEqual(t.events.gaps.length, 1);
  });

  test('a join row of another epoch is acted on at once; the gap frame after it is no second gap', async () => {
    let epoch = E1;
    const t = setup({ api: positionsApi({ positionOf: () => ({ epoch, seq: 3 }) }) });
    await connected(t);
    await t.conversations.open(ROOM);
    epoch = E2;
    await reconnect(t, 'SOCKET00002', 6);
    assert.deepEqual(t.events.gaps.map((e) => [e.reason, e.epoch, e.seq]), [['epoch', E2, 3]]);
    gapFrame(t.ws.last, 'epoch', E2, 3);
    await flush(6);
    assert.equal(t.events.gaps.length, 1);
    assert.equal(t.api.callsOf('catchup').length, 2, 'hydration, then one catch-up');
  });

  test('an expired history: the resume becomes a gap', async () => {
    let last = 1;
    const t = setup({ api: positionsApi({ positionOf: () => ({ epoch: E1, seq: last }) }) });
    await connected(t);
    await t.conversations.open(ROOM);
    last = 1500;
    await reconnect(t, 'SOCKET00002', 6);
    assert.deepEqual(t.events.resumes, [], 'waiting for 1499 frames');
    gapFrame(t.ws.last, 'expired', E1, 1500);
    await flush(6);
    assert.deepEqual(t.events.gaps.map((e) => [e.reason, e.seq]), [['expired', 1500]]);
    assert.equal(t.api.callsOf('catchup').length, 2);
    seqFrame(t.ws.last, 'message', msg(1), 1501);
    assert.deepEqual(t.events.resumes, [], 'the resume was called off by the gap');
    assert.equal(t.events.gaps.length, 1);
  });

  test('a seq that skips ahead is a gap: the frame is applied and the room caught up', async () => {
    const t = setup({ api: positionsApi({ positionOf: () => ({ epoch: E1, seq: 10 }) }) });
    await connected(t);
    await t.conversations.open(ROOM);
    seqFrame(t.ws.last, 'message', msg(1), 11);
    seqFrame(t.ws.last, 'message', msg(3), 13);
    await flush(6);
    assert.deepEqual(ids(t.conversations.getMessages(CONV)), ['M1', 'M3']);
    assert.deepEqual(t.events.gaps.map((e) => [e.reason, e.epoch, e.seq, e.previous.seq]), [['jump', E1, 12, 11]]);
    assert.deepEqual(t.api.callsOf('catchup')[1], ['C1', CONV, '2026-05-04T12:00:03.000Z']);
    assert.deepEqual(t.subscriptions.position('C1', CONV), { epoch: E1, seq: 13 });
  });

  test('a gap on a live socket (lost) is caught up too', async () => {
    const t = setup({ api: positionsApi({ positionOf: () => ({ epoch: E1, seq: 0 }) }) });
    await connected(t);
    await t.conversations.open(ROOM);
    gapFrame(t.ws.last, 'lost', E1, 9);
    await flush(6);
    assert.deepEqual(t.events.storeGaps.map((e) => e.reason), ['lost']);
    assert.deepEqual(t.subscriptions.position('C1', CONV), { epoch: E1, seq: 9 });
  });

  test('frames of rooms not joined, and of other conversations, are left alone', async () => {
    const t = setup({ api: positionsApi({ positionOf: () => ({ epoch: E1, seq: 5 }) }) });
    await connected(t);
    await t.conversations.open(ROOM);
    const seen = [];
    t.socket.addHandler('message', 'spy', (data) => seen.push(data.id));
    seqFrame(t.ws.last, 'message', message('X1', '2026-05-04T12:00:00.000Z', { conversationId: 'OTHER000001' }), 1, { conversationId: 'OTHER000001' });
    assert.deepEqual(seen, ['X1'], 'not dropped: no position is held for that room');
    assert.deepEqual(t.subscriptions.position('C1', CONV), { epoch: E1, seq: 5 });
  });

  test('alerts: privateMessage and notification frames keep the alerts position; a gap refetches the counts', async () => {
    let alertsSeq = 3;
    const t = setup({
      api: positionsApi({ positionOf: (item) => ({ epoch: E1, seq: item.conversationId === 'alerts' ? alertsSeq : 0 }) }),
    });
    await connected(t);
    await t.notifications.initialize({ churchId: 'C1', personId: 'P1' });
    assert.equal(t.api.callsOf('unreadCount').length, 1);
    const counts = (n, m) => ({ counts: { notificationCount: n, pmCount: m } });
    // §3.1: privateMessage carries the private conversation's id, notification "alert".
    seqFrame(t.ws.last, 'privateMessage', counts(0, 1), 4, { conversationId: 'PRIVCONV001' });
    seqFrame(t.ws.last, 'notification', counts(1, 1), 5, { conversationId: 'alert' });
    seqFrame(t.ws.last, 'notification', counts(1, 1), 5, { conversationId: 'alert' }); // a replay
    assert.deepEqual(t.subscriptions.position('C1', 'alerts'), { epoch: E1, seq: 5 });
    assert.deepEqual(t.notifications.getCounts(), { notificationCount: 1, pmCount: 1 });

    // A resumed re-join replays the counts: no refetch.
    alertsSeq = 6;
    await reconnect(t, 'SOCKET00002', 6);
    assert.deepEqual(joinItems(t)[1].since, { epoch: E1, seq: 5 });
    seqFrame(t.ws.last, 'notification', counts(2, 1), 6, { conversationId: 'alert' });
    assert.equal(t.api.callsOf('unreadCount').length, 1);
    assert.deepEqual(t.events.resumes.map((e) => [e.conversationId, e.replayed]), [['alerts', 1]]);

    // A gap in alerts refetches them.
    gapFrame(t.ws.last, 'lost', E1, 9, { conversationId: 'alerts' });
    await flush(6);
    assert.equal(t.api.callsOf('unreadCount').length, 2);
    assert.deepEqual(t.events.gaps.map((e) => [e.conversationId, e.reason]), [['alerts', 'lost']]);
    assert.deepEqual(t.errors, []);
  });

  test('a room joined with another church than the server resolved is still tracked by its id', async () => {
    const t = setup({ api: positionsApi({ positionOf: () => ({ epoch: E1, seq: 1 }) }) });
    await connected(t);
    await t.subscriptions.joinRoom({ churchId: 'WRONG', conversationId: CONV });
    seqFrame(t.ws.last, 'message', msg(2), 2, { churchId: 'C1' });
    seqFrame(t.ws.last, 'message', msg(2), 2, { churchId: 'C1' });
    assert.deepEqual(t.subscriptions.position('WRONG', CONV), { epoch: E1, seq: 2 });
  });

  test('a re-join retried after a 5xx names the position reached by then', async () => {
    let last = 1;
    let fail = false;
    const api = positionsApi({ positionOf: () => ({ epoch: E1, seq: last }) });
    const joinRooms = api.joinRooms;
    const sinces = [];
    api.joinRooms = (items) => {
      sinces.push(items[0].since);
      if (!fail) return joinRooms(items);
      fail = false;
      // The server processed the join (and queued its replay) but the answer was lost.
      seqFrame(t.ws.last, 'message', msg(2), 2);
      return Promise.reject(Object.assign(new Error('bad gateway'), { status: 502 }));
    };
    const t = setup({ api });
    await connected(t);
    await t.conversations.open(ROOM);
    last = 3;
    fail = true;
    await reconnect(t, 'SOCKET00002', 6);
    t.clock.advance(1000);
    await flush(6);
    assert.deepEqual(sinces, [undefined, { epoch: E1, seq: 1 }, { epoch: E1, seq: 2 }]);
    // The retry's replay starts after 2; a stray repeat of 2 is dropped.
    seqFrame(t.ws.last, 'message', msg(2), 2);
    seqFrame(t.ws.last, 'message', msg(3), 3);
    assert.deepEqual(ids(t.conversations.getMessages(CONV)), ['M2', 'M3']);
    assert.deepEqual(t.events.resumes.map((e) => e.replayed), [1]);
    assert.deepEqual(t.errors, []);
  });

  test('leaving a room forgets its position; a later join starts fresh (no since)', async () => {
    const t = setup({ api: positionsApi({ positionOf: () => ({ epoch: E1, seq: 8 }) }) });
    await connected(t);
    await t.subscriptions.joinRoom(ROOM);
    const left = t.subscriptions.leaveRoom('C1', CONV);
    t.clock.advance(250);
    await left;
    await t.subscriptions.joinRoom(ROOM);
    assert.deepEqual(joinItems(t).map((i) => i.since), [undefined, undefined]);
  });
});
