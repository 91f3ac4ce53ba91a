// Demo page: an anonymous live-stream viewer and a signed-in group-chat member, each with its
// own messaging client (its own socket), as two different people would have.
//
// URL parameters (all optional): church, stream, name, join=1 (join the stream at once),
// rest (REST base), socket (WebSocket URL), positions=0 (no positions: at-most-once delivery
// and a REST catch-up after every reconnect, as before PROTOCOL.md §5.6).

import { createMessagingClient, MessagingApi } from '../messaging.js';

const params = new URLSearchParams(location.search);
const restBase = params.get('rest') || `${location.origin}/messaging`;
const socketUrl = params.get('socket') || undefined;
const positions = params.get('positions') !== '0';
const REACTIONS = ['👍', '❤️', '🙏', '😂'];

const $ = (selector, root = document) => root.querySelector(selector);

// ─── Small view helpers ──────────────────────────────────────────────────────────────────────

function initials(name) {
  const words = String(name || '').trim().split(/\s+/).filter(Boolean);
  if (!words.length) return '?';
  return (words[0][0] + (words.length > 1 ? words[words.length - 1][0] : '')).toUpperCase();
}

/** A stable colour per name, so the same person looks the same in every list. */
function avatarColor(name) {
  let hash = 0;
  for (const ch of String(name || '')) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360} 52% 46%)`;
}

function avatar(name, size = '') {
  const el = document.createElement('span');
  el.className = `avatar ${size}`.trim();
  el.setAttribute('aria-hidden', 'true');
  el.textContent = initials(name);
  el.style.setProperty('--avatar', avatarColor(name));
  return el;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });

/** The message an error should show a person: the server's own words when it sent some. */
function describe(error) {
  const server = error?.body?.error;
  if (typeof server === 'string') return server;
  if (typeof server?.message === 'string') return server.message;
  if (error?.status === 0) return 'The server could not be reached.';
  return error?.message || String(error);
}

function showError(el, error) {
  el.textContent = describe(error);
  el.hidden = false;
}

function clearError(el) {
  el.hidden = true;
  el.textContent = '';
}

async function busy(button, work) {
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
  }
}

/** Keeps a status pill in step with a socket: state, socket id, and a retry countdown. */
function bindStatus(el, socket) {
  let ticker = null;
  const render = () => {
    const { state } = socket;
    el.hidden = false;
    el.dataset.state = state;
    el.dataset.socketId = socket.socketId ?? '';
    let text = 'Offline';
    if (state === 'open') text = 'Live';
    else if (state === 'connecting') text = socket.attempt ? 'Reconnecting…' : 'Connecting…';
    else if (state === 'waiting') text = `Retrying in ${Math.max(1, Math.ceil((socket.retryAt - Date.now()) / 1000))} s`;
    $('.status-text', el).textContent = text;
    if (state === 'waiting' && !ticker) ticker = setInterval(render, 1000);
    if (state !== 'waiting' && ticker) {
      clearInterval(ticker);
      ticker = null;
    }
  };
  const off = socket.onStateChange(render);
  render();
  return () => {
    off();
    if (ticker) clearInterval(ticker);
    el.hidden = true;
    el.dataset.state = 'idle';
  };
}

/**
 * Shows a panel's resumes and gaps (§5.6) in its status note: after a reconnect the room
 * either got its missed frames replayed ("resumed") or was refetched through REST ("gap").
 * The note's data attributes count the events (`data-resumes`, `data-gaps`) for tests.
 */
function bindSync(el, client, { alerts = false } = {}) {
  let resumes = 0;
  let gaps = 0;
  const show = (event, text, details) => {
    el.hidden = false;
    el.textContent = `${text} · ${timeFormat.format(new Date())}`;
    Object.assign(el.dataset, { event, resumes: String(resumes), gaps: String(gaps), ...details });
  };
  const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
  const offs = [
    client.subscriptions.onResume(({ conversationId, replayed }) => {
      resumes += 1;
      const where = conversationId === 'alerts' ? ' (alerts)' : '';
      show('resume', replayed ? `Resumed${where}: ${plural(replayed, 'missed frame')} replayed` : `Resumed${where}: nothing missed`,
        { room: conversationId, reason: '', count: String(replayed) });
    }),
    client.conversations.onGap(({ conversationId, reason, refetched }) => {
      gaps += 1;
      show('gap', `Gap (${reason}): room refetched, ${plural(refetched, 'message')} recovered`,
        { room: conversationId, reason, count: String(refetched) });
    }),
  ];
  if (alerts) {
    offs.push(client.subscriptions.onGap(({ conversationId, reason }) => {
      if (conversationId !== 'alerts') return;
      gaps += 1;
      show('gap', `Gap (${reason}) in alerts: counts refetched`, { room: conversationId, reason, count: '' });
    }));
  }
  return () => {
    offs.forEach((off) => off());
    el.hidden = true;
    el.textContent = '';
    for (const key of ['event', 'resumes', 'gaps', 'room', 'reason', 'count']) delete el.dataset[key];
  };
}

/**
 * Renders messages into `list`, reusing unchanged items (no flicker, no lost scroll) and
 * keeping the view pinned to the newest message when it already was.
 */
function renderMessages(list, messages, options) {
  const pinned = list.scrollHeight - list.scrollTop - list.clientHeight < 48;
  const cache = list._items ?? new Map();
  const next = new Map();
  const nodes = messages.map((message) => {
    const signature = JSON.stringify([message.content, message.timeUpdated, message.displayName, message.reactions,
      options.isOwn(message), options.canDelete?.(message) ?? false]);
    const cached = cache.get(message.id);
    const node = cached?.signature === signature ? cached.node : messageItem(message, options);
    next.set(message.id, { signature, node });
    return node;
  });
  list._items = next;
  list.replaceChildren(...nodes);
  if (pinned) list.scrollTop = list.scrollHeight;
}

function messageItem(message, { isOwn, canDelete, onReact, onDelete }) {
  const item = $('#message-template').content.firstElementChild.cloneNode(true);
  const name = message.displayName || 'Anonymous';
  item.dataset.id = message.id;
  item.classList.toggle('own', isOwn(message));
  $('.avatar', item).replaceWith(avatar(name, 'avatar-sm'));
  $('.msg-author', item).textContent = name;
  const time = $('.msg-time', item);
  time.dateTime = message.timeSent;
  time.textContent = timeFormat.format(new Date(message.timeSent));
  $('.msg-edited', item).hidden = !message.timeUpdated;
  $('.msg-text', item).textContent = message.content;

  const reactions = $('.msg-reactions', item);
  for (const { emoji, count, mine } of message.reactions ?? []) {
    const chip = document.createElement('button');
    chip.type = 'button';
    chip.className = `reaction${mine ? ' mine' : ''}`;
    chip.setAttribute('aria-pressed', String(mine));
    chip.setAttribute('aria-label', `${emoji} ${count}${mine ? ', including you' : ''}`);
    chip.dataset.testid = 'reaction';
    chip.append(emoji, Object.assign(document.createElement('span'), { className: 'reaction-count', textContent: count }));
    if (onReact) chip.addEventListener('click', () => onReact(message, emoji));
    else chip.disabled = true;
    reactions.append(chip);
  }

  const tools = $('.msg-tools', item);
  if (onReact) {
    for (const emoji of REACTIONS) {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'tool';
      button.textContent = emoji;
      button.title = `React with ${emoji}`;
      button.setAttribute('aria-label', `React with ${emoji}`);
      button.addEventListener('click', () => onReact(message, emoji));
      tools.append(button);
    }
  }
  if (canDelete?.(message)) {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'tool danger';
    button.title = 'Delete message';
    button.setAttribute('aria-label', 'Delete message');
    button.dataset.testid = 'delete-message';
    button.innerHTML = '<svg viewBox="0 0 20 20" width="15" height="15" aria-hidden="true"><path fill="currentColor" d="M8 2h4a1 1 0 0 1 1 1v1h3a1 1 0 1 1 0 2h-.6l-.8 10.1A2 2 0 0 1 12.6 18H7.4a2 2 0 0 1-2-1.9L4.6 6H4a1 1 0 0 1 0-2h3V3a1 1 0 0 1 1-1zm-1.4 4 .8 10h5.2l.8-10H6.6z"/></svg>';
    button.addEventListener('click', () => onDelete(message));
    tools.append(button);
  }
  return item;
}

// ─── Development tokens ──────────────────────────────────────────────────────────────────────

/** Mints a token from the dev-only endpoint; rejects when the server is not in dev mode. */
async function mintToken(query) {
  const response = await fetch(`/demo/token?${new URLSearchParams(query)}`, { cache: 'no-store' });
  if (!response.ok) throw new Error(`Development tokens are off (GET /demo/token answered ${response.status}). Start the server with --dev.`);
  return response.json();
}

const devMode = mintToken({ churchId: 'probe', personId: 'probe' }).then(() => true, () => false);

devMode.then((dev) => {
  const note = $('#dev-note');
  note.textContent = dev
    ? 'Development mode: the demo mints its own tokens. Open a second tab to see presence and chat move live.'
    : 'Development tokens are off (start the server with --dev). Anonymous viewing still works for existing streams.';
  note.dataset.dev = String(dev);
  if (!dev) $('[data-testid="member-signin"]').disabled = true;
});

/** A person id derived from the name, so the same name in two tabs is the same person. */
function personIdFor(first, last) {
  const slug = `${first} ${last}`.trim().toLowerCase().normalize('NFKD').replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
  return `demo-${slug || 'member'}`.slice(0, 64);
}

// ─── Live stream: anonymous viewer ───────────────────────────────────────────────────────────

const live = {
  form: $('#live-form'),
  room: $('#live-room'),
  error: $('[data-testid="live-error"]'),
  list: $('[data-testid="live-messages"]'),
  client: null,
  churchId: null,
  conversation: null,
  name: '',
  sent: new Set(), // ids of messages this tab posted, to mark them as its own
  teardown: [],
};

live.form.church.value = params.get('church') || 'DEMO';
live.form.stream.value = params.get('stream') || 'sunday-service';
live.form.name.value = params.get('name') ?? '';
live.list.dataset.empty = 'No messages yet. Say hello to everyone watching.';

/** The stream's current conversation. An anonymous caller cannot create the first room of a
 *  church the server does not know yet (404 "Church not found"), so in dev mode a host token
 *  opens it; viewing and posting stay anonymous either way. */
async function findLiveRoom(api, churchId, stream) {
  if (await devMode) {
    const { token } = await mintToken({ churchId, personId: 'demo-host', firstName: 'Stream', lastName: 'Host' });
    const host = new MessagingApi({ baseUrl: restBase, getToken: () => token });
    return host.currentConversation(churchId, 'streamingLive', stream);
  }
  try {
    return await api.currentConversation(churchId, 'streamingLive', stream);
  } catch (error) {
    if (error.status === 404) {
      throw new Error(`“${churchId}” has no conversations on this server yet, so anonymous viewers cannot open its stream. Start the server with --dev to let the demo create it.`);
    }
    throw error;
  }
}

function renderViewers(snapshot) {
  const total = snapshot?.totalViewers ?? 0;
  const count = $('[data-testid="viewer-count"]');
  count.replaceChildren(Object.assign(document.createElement('strong'), { textContent: total }), ' watching');
  count.dataset.count = String(total);
  const chips = (snapshot?.groups ?? []).map(({ displayName, count: n }) => {
    const chip = document.createElement('li');
    chip.className = 'chip';
    chip.dataset.testid = 'viewer';
    chip.append(avatar(displayName, 'avatar-xs'), Object.assign(document.createElement('span'), { className: 'chip-name', textContent: displayName }));
    if (n > 1) chip.append(Object.assign(document.createElement('span'), { className: 'chip-count', textContent: `×${n}` }));
    return chip;
  });
  if (snapshot?.hidden) {
    chips.push(Object.assign(document.createElement('li'), { className: 'chip more', textContent: `+${snapshot.hidden} more` }));
  }
  $('[data-testid="viewer-list"]').replaceChildren(...chips);
}

function renderLive(messages) {
  renderMessages(live.list, messages, { isOwn: (m) => live.sent.has(m.id) });
}

function rememberInUrl(entries) {
  const url = new URL(location.href);
  for (const [key, value] of Object.entries(entries)) {
    if (value) url.searchParams.set(key, value);
    else url.searchParams.delete(key);
  }
  history.replaceState(null, '', url);
}

async function joinLive() {
  clearError(live.error);
  const churchId = live.form.church.value.trim();
  const stream = live.form.stream.value.trim();
  const name = live.form.name.value.trim();
  const client = createMessagingClient({
    restBase, socketUrl, positions, onError: (error) => showError(live.error, error),
  });
  try {
    const conversation = await findLiveRoom(client.api, churchId, stream);
    Object.assign(live, { client, churchId, conversation, name });
    live.teardown.push(bindStatus($('[data-testid="live-status"]'), client.socket));
    live.teardown.push(bindSync($('[data-testid="live-sync"]'), client));
    live.teardown.push(client.presence.subscribe(churchId, conversation.id, renderViewers));
    live.teardown.push(client.conversations.subscribe(conversation.id, renderLive));
    renderViewers(null);
    // "Anonymous " (trailing space) asks the server for a numbered name (§5.1).
    const messages = await client.conversations.open({ churchId, conversationId: conversation.id, displayName: name || 'Anonymous ' });
    renderLive(messages);
    const roomName = $('[data-testid="live-room-name"]');
    roomName.textContent = stream;
    roomName.title = stream; // the bar ellipsizes long names
    $('#live-rename').name.value = name;
    live.form.hidden = true;
    live.room.hidden = false;
    live.room.dataset.conversationId = conversation.id;
    rememberInUrl({ church: churchId, stream, name });
    $('[data-testid="live-input"]').focus();
  } catch (error) {
    live.teardown.splice(0).forEach((off) => off());
    client.destroy();
    live.client = null;
    throw error;
  }
}

async function leaveLive() {
  const { client, conversation } = live;
  if (!client) return;
  live.client = null;
  live.teardown.splice(0).forEach((off) => off());
  try {
    await client.conversations.close(conversation.id);
  } finally {
    client.destroy();
  }
  live.room.hidden = true;
  live.form.hidden = false;
  live.list.replaceChildren();
  live.list._items = null;
}

live.form.addEventListener('submit', (event) => {
  event.preventDefault();
  busy($('[data-testid="live-join"]'), joinLive).catch((error) => showError(live.error, error));
});

$('#live-leave').addEventListener('click', (event) => {
  busy(event.currentTarget, leaveLive).catch((error) => showError(live.error, error));
});

$('#live-composer').addEventListener('submit', (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const content = form.content.value.trim();
  if (!content || !live.client) return;
  clearError(live.error);
  busy($('[data-testid="live-send"]'), async () => {
    const sent = await live.client.conversations.send({
      churchId: live.churchId, conversationId: live.conversation.id, content, displayName: live.name,
    });
    if (sent) live.sent.add(sent.id);
    renderLive(live.client.conversations.getMessages(live.conversation.id));
    form.content.value = '';
    form.content.focus();
  }).catch((error) => showError(live.error, error));
});

$('#live-rename').addEventListener('submit', (event) => {
  event.preventDefault();
  const name = event.currentTarget.name.value.trim();
  if (!live.client) return;
  clearError(live.error);
  busy($('[data-testid="live-rename"]'), async () => {
    await live.client.subscriptions.setName(name || 'Anonymous ');
    live.name = name;
    rememberInUrl({ name });
  }).catch((error) => showError(live.error, error));
});

// ─── Group chat: signed-in member ────────────────────────────────────────────────────────────

const member = {
  form: $('#member-form'),
  room: $('#member-room'),
  error: $('[data-testid="member-error"]'),
  list: $('[data-testid="member-messages"]'),
  client: null,
  claims: null,
  churchId: null,
  conversation: null,
  moderator: false,
  bot: null, // { api, personId, pmConversationId }
  teardown: [],
};

member.form.firstName.value = params.get('first') || 'Ada';
member.form.lastName.value = params.get('last') ?? 'Lovelace';
member.form.church.value = params.get('church') || 'DEMO';
member.form.group.value = params.get('group') || 'G1';
member.list.dataset.empty = 'No messages in this group yet. Start the conversation.';

/** The group's newest conversation, created when the group has none. */
async function findGroupConversation(api, churchId, groupId) {
  const existing = await api.conversationsForContent(churchId, 'group', groupId);
  if (existing.length) return existing[0];
  const [created] = await api.saveConversations([{
    contentType: 'group', contentId: groupId, groupId, title: `${groupId} group chat`, visibility: 'public',
  }]);
  return created;
}

function renderMember(messages) {
  const me = member.claims?.personId;
  renderMessages(member.list, messages, {
    isOwn: (m) => m.personId === me,
    canDelete: (m) => m.personId === me || member.moderator,
    onReact: (m, emoji) => member.client.conversations.react(m.id, emoji).catch((error) => showError(member.error, error)),
    onDelete: (m) => member.client.conversations.remove(m.id).catch((error) => showError(member.error, error)),
  });
}

function renderCounts(counts) {
  for (const [testid, value] of [['counter-notifications', counts.notificationCount], ['counter-pms', counts.pmCount]]) {
    const badge = $(`[data-testid="${testid}"] .badge`);
    if (badge.dataset.count === String(value)) continue;
    badge.dataset.count = String(value);
    badge.textContent = value > 99 ? '99+' : String(value);
    badge.classList.add('bump');
    setTimeout(() => badge.classList.remove('bump'), 200);
  }
}

/** Reactions are not part of catch-up; the conversation listing carries their summaries. */
async function seedReactions(client, conversationId, groupId) {
  const pages = await client.api.conversationMessages('group', groupId, { limit: 100 });
  const conversation = pages.find((c) => c.id === conversationId);
  for (const message of conversation?.messages ?? []) {
    if (message.reactions?.length) client.conversations.setReactions(conversationId, message.id, message.reactions);
  }
}

async function signIn() {
  clearError(member.error);
  const firstName = member.form.firstName.value.trim();
  const lastName = member.form.lastName.value.trim();
  const churchId = member.form.church.value.trim();
  const groupId = member.form.group.value.trim();
  const moderator = member.form.moderator.checked;
  const personId = personIdFor(firstName, lastName);
  const { token, claims } = await mintToken({
    churchId, personId, firstName, lastName, groupIds: groupId, permissions: moderator ? 'Content__Edit' : '',
  });
  const client = createMessagingClient({
    restBase, socketUrl, positions, getToken: () => token, personId, onError: (error) => showError(member.error, error),
  });
  try {
    const conversation = await findGroupConversation(client.api, churchId, groupId);
    Object.assign(member, { client, claims, churchId, conversation, moderator, bot: null });
    member.teardown.push(bindStatus($('[data-testid="member-status"]'), client.socket));
    member.teardown.push(bindSync($('[data-testid="member-sync"]'), client, { alerts: true }));
    member.teardown.push(client.conversations.subscribe(conversation.id, renderMember));
    member.teardown.push(client.notifications.subscribe(renderCounts));
    renderMember(await client.conversations.open({ churchId, conversationId: conversation.id }));
    await seedReactions(client, conversation.id, groupId);
    renderCounts(await client.notifications.initialize({ churchId, personId }));
    const fullName = `${firstName} ${lastName}`.trim();
    const who = $('[data-testid="member-avatar"]');
    who.textContent = initials(fullName);
    who.style.setProperty('--avatar', avatarColor(fullName));
    $('[data-testid="member-name"]').textContent = fullName;
    $('[data-testid="member-sub"]').textContent = `${groupId} · ${churchId}${moderator ? ' · moderator' : ''}`;
    member.form.hidden = true;
    member.room.hidden = false;
    member.room.dataset.conversationId = conversation.id;
    $('[data-testid="member-input"]').focus();
  } catch (error) {
    member.teardown.splice(0).forEach((off) => off());
    client.destroy();
    member.client = null;
    throw error;
  }
}

async function signOut() {
  const { client, conversation } = member;
  if (!client) return;
  member.client = null;
  member.teardown.splice(0).forEach((off) => off());
  try {
    await Promise.all([client.conversations.close(conversation.id), client.notifications.cleanup()]);
  } finally {
    client.destroy();
  }
  renderCounts({ notificationCount: 0, pmCount: 0 });
  member.room.hidden = true;
  member.form.hidden = false;
  member.list.replaceChildren();
  member.list._items = null;
}

/** A second person ("Demo Bot", Messaging Admin) who sends this member alerts. */
async function demoBot() {
  if (member.bot) return member.bot;
  const { token } = await mintToken({
    churchId: member.churchId, personId: 'demo-bot', firstName: 'Demo', lastName: 'Bot', permissions: 'Messaging__Admin',
  });
  member.bot = { api: new MessagingApi({ baseUrl: restBase, getToken: () => token }), pmConversationId: null };
  return member.bot;
}

const counterActions = {
  /** The bot writes to this member in a private conversation: `privateMessage {counts}`. */
  async pm() {
    const bot = await demoBot();
    if (!bot.pmConversationId) {
      const [conversation] = await bot.api.saveConversations([{ contentType: 'privateMessage', contentId: 'demo-bot', title: 'Demo Bot' }]);
      await bot.api.post('/privatemessages', [{ toPersonId: member.claims.personId, conversationId: conversation.id }]);
      bot.pmConversationId = conversation.id;
    }
    await bot.api.saveMessages([{ conversationId: bot.pmConversationId, content: 'Hello from the demo bot 👋' }]);
  },
  /** A notification for this member: `notification {counts}`. */
  async notify() {
    const bot = await demoBot();
    await bot.api.post('/notifications/create', {
      peopleIds: [member.claims.personId], contentType: 'demo', contentId: `demo-${Date.now()}`, message: 'A demo notification',
    });
  },
  /** Opening the inbox clears private-message flags; markRead clears notifications. Neither
   *  sends a frame (§7), so the counts are refetched. */
  async read() {
    const { api, notifications } = member.client;
    await Promise.all([api.privateMessages(), api.markNotificationsRead(member.churchId, member.claims.personId)]);
    await notifications.refresh();
  },
};

member.form.addEventListener('submit', (event) => {
  event.preventDefault();
  busy($('[data-testid="member-signin"]'), signIn).catch((error) => showError(member.error, error));
});

$('#member-signout').addEventListener('click', (event) => {
  busy(event.currentTarget, signOut).catch((error) => showError(member.error, error));
});

$('.counter-actions').addEventListener('click', (event) => {
  const button = event.target.closest('button[data-action]');
  if (!button || !member.client) return;
  clearError(member.error);
  busy(button, counterActions[button.dataset.action]).catch((error) => showError(member.error, error));
});

$('#member-composer').addEventListener('submit', (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const content = form.content.value.trim();
  if (!content || !member.client) return;
  clearError(member.error);
  busy($('[data-testid="member-send"]'), async () => {
    await member.client.conversations.save({ conversationId: member.conversation.id, content });
    form.content.value = '';
    form.content.focus();
  }).catch((error) => showError(member.error, error));
});

if (params.get('join') === '1') live.form.requestSubmit();
