// Types of messaging.js (the browser client of the messaging service, see README.md).

/** A server frame (§3.1). */
export interface Envelope<T = unknown> {
  churchId: string;
  conversationId: string;
  action: string;
  data: T;
  /** the frame's place in its room's stream, on sockets with positions (§5.6) */
  seq?: number;
}

/** A place in a room's stream of frames (§5.6): the last `seq` applied, within `epoch`. */
export interface Position {
  epoch: string;
  seq: number;
}

export interface Message {
  id: string;
  churchId: string;
  conversationId: string;
  personId: string | null;
  displayName: string | null;
  /** RFC 3339 UTC with milliseconds, e.g. `2026-05-04T12:34:56.789Z` */
  timeSent: string;
  timeUpdated: string | null;
  messageType: string;
  content: string;
}

export interface ReactionSummary {
  emoji: string;
  count: number;
  /** the signed-in person reacted with this emoji */
  mine: boolean;
}

export interface MessageView extends Message {
  reactions: ReactionSummary[];
}

export interface Connection {
  id: string;
  churchId: string;
  conversationId: string;
  personId: string | null;
  displayName: string | null;
  timeJoined: string;
  socketId: string;
  ipAddress: string | null;
  /** the room's last `seq` when this socket joined; only for sockets with positions (§5.6) */
  position?: Position;
}

export interface Conversation {
  id: string;
  churchId: string;
  contentType: string | null;
  contentId: string | null;
  title: string | null;
  dateCreated: string;
  groupId: string | null;
  visibility: string | null;
  firstPostId: string | null;
  lastPostId: string | null;
  postCount: number;
  allowAnonymousPosts: boolean;
}

export interface Counts {
  notificationCount: number;
  pmCount: number;
}

export interface Viewer {
  id: string;
  displayName: string | null;
}

export interface ViewerGroup {
  displayName: string;
  count: number;
}

export interface PresenceSnapshot {
  conversationId: string;
  viewers: Viewer[];
  totalViewers: number;
  /** viewers grouped by display name, in roster order */
  groups: ViewerGroup[];
  /** viewers counted in `totalViewers` but beyond the roster cap */
  hidden: number;
}

export interface Clock {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  now(): number;
}

export type ErrorSink = (error: unknown) => void;
export type Unsubscribe = () => void;
export type TokenSource = () => string | null | undefined | Promise<string | null | undefined>;

export function defaultRestBase(): string;
export function defaultSocketUrl(): string;
/** `url` with the `positions=1` query parameter, unless it already has a `positions` one. */
export function withPositions(url: string): string;

// ---------------------------------------------------------------------------------------------

export class MessagingApiError extends Error {
  constructor(message: string, details?: { status?: number; body?: unknown; method?: string; url?: string; cause?: unknown });
  name: 'MessagingApiError';
  /** HTTP status; 0 when the request never got an answer */
  status: number;
  /** the parsed response body, e.g. `{"error":"Conversation not found"}` */
  body: unknown;
  method: string;
  url: string;
}

export interface MessagingApiOptions {
  /** default `<page origin>/messaging` */
  baseUrl?: string;
  fetch?: typeof fetch;
  getToken?: TokenSource;
}

export class MessagingApi {
  constructor(options?: MessagingApiOptions);
  readonly baseUrl: string;
  request<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
  get<T = unknown>(path: string): Promise<T>;
  post<T = unknown>(path: string, body?: unknown): Promise<T>;
  delete<T = unknown>(path: string): Promise<T>;

  joinRooms(items: Array<{ conversationId: string; socketId: string; churchId?: string; displayName?: string; since?: Position }>): Promise<Connection[]>;
  leaveRoom(churchId: string, roomId: string, socketId: string): Promise<{ success: true }>;
  setName(socketId: string, name: string): Promise<Connection[]>;
  currentConversation(churchId: string, contentType: string, contentId: string): Promise<Conversation>;
  conversationsForContent(churchId: string, contentType: string, contentId: string): Promise<Conversation[]>;
  saveConversations(items: Array<Partial<Conversation> & { contentType?: string; contentId?: string }>): Promise<Conversation[]>;
  conversationMessages(contentType: string, contentId: string, paging?: { page?: number; limit?: number }): Promise<Array<Conversation & { messages: Array<Message & { reactions: ReactionSummary[] }> }>>;
  catchup(churchId: string, conversationId: string, since?: string | null): Promise<Message[]>;
  sendMessages(items: Array<{ conversationId: string; content: string; churchId?: string; displayName?: string; messageType?: string }>): Promise<Message[]>;
  saveMessages(items: Array<{ id?: string; conversationId: string; content: string; displayName?: string; messageType?: string }>): Promise<Message[]>;
  react(messageId: string, emoji: string): Promise<{ messageId: string; emoji: string; added: boolean }>;
  deleteMessage(id: string): Promise<{ message: string }>;
  privateMessages(): Promise<unknown[]>;
  unreadCount(): Promise<Counts>;
  markNotificationsRead(churchId: string, personId: string): Promise<{ success: true }>;
}

// ---------------------------------------------------------------------------------------------

export type SocketState = 'idle' | 'connecting' | 'open' | 'waiting' | 'closed';

/** Payload of the local `reconnect` event. */
export interface ReconnectEvent {
  socketId: string;
  previousSocketId: string;
}

export interface SocketHelperOptions {
  /** default `ws(s)://<page host>/` */
  url?: string;
  WebSocket?: new (url: string) => WebSocket;
  clock?: Clock;
  /** jitter source in [0, 1) */
  random?: () => number;
  /** receives `online` and `focus`; default `window`, `null` for none */
  windowTarget?: EventTarget | null;
  /** receives `visibilitychange` (and has `visibilityState`); default `document` */
  documentTarget?: (EventTarget & { visibilityState?: string }) | null;
  /** default 5000 */
  handshakeTimeoutMs?: number;
  /** default 3000 */
  probeTimeoutMs?: number;
  /** default 500 */
  backoffBaseMs?: number;
  /** default 30000 */
  backoffMaxMs?: number;
  /** Opt into positions (§5.6): sockets open with `positions=1` added to `url`. Default
   *  true; false opens exactly `url` and the client behaves as before positions existed. */
  positions?: boolean;
  onError?: ErrorSink;
}

export class SocketHelper {
  constructor(options?: SocketHelperOptions);
  /** the URL as given; sockets open with `withPositions(url)` when `positions` is on */
  readonly url: string;
  readonly positions: boolean;
  socket: WebSocket | null;
  socketId: string | null;
  state: SocketState;
  /** failed attempts since the last successful handshake */
  attempt: number;
  /** epoch ms of the scheduled reconnect while `waiting` */
  retryAt: number | null;
  handshakeTimeoutMs: number;
  probeTimeoutMs: number;
  backoffBaseMs: number;
  backoffMaxMs: number;

  /** Resolves with the socket id; concurrent calls share one connect. */
  init(): Promise<string>;
  addHandler(action: 'reconnect', id: string, fn: (event: ReconnectEvent) => void): void;
  addHandler<T = any>(action: string, id: string, fn: (data: T, envelope: Envelope<T>) => void): void;
  removeHandler(id: string): void;
  /** Sees every frame but `socketId` before the handlers; returning `false` drops it. */
  addFrameFilter(fn: (frame: Envelope) => boolean | void): Unsubscribe;
  onStateChange(fn: (state: SocketState, helper: SocketHelper) => void): Unsubscribe;
  /** Sends `getId` on a socket that looks open and reconnects if nothing answers in time. */
  probe(): void;
  /** Deliberate close: no reconnect. */
  close(): void;
  backoffDelay(attempt: number): number;
}

// ---------------------------------------------------------------------------------------------

export interface RoomRef {
  churchId: string;
  conversationId: string;
}

export interface RejoinEvent extends RoomRef {
  socketId: string;
  connection: Connection | null;
  /** the re-join named the room's position (§5.6): missed frames are replayed, or a gap
   *  (`onGap`) follows; false: fetch what was missed */
  resumed: boolean;
}

/** Frames of a joined room were missed and will not be replayed (§5.6). */
export interface GapEvent extends RoomRef {
  /** `epoch`, `expired`, `lost` (from the server's `gap` frame), or `jump` (a frame's `seq`
   *  skipped ahead) */
  reason: 'epoch' | 'expired' | 'lost' | 'jump' | string;
  /** the position the room continues from: the next frame is `seq + 1` */
  epoch: string;
  seq: number;
  /** the position held before the gap */
  previous: Position | null;
}

/** A re-join with `since` received every replayed frame (§5.6). */
export interface ResumeEvent extends RoomRef {
  /** how many frames were replayed (0: nothing was missed) */
  replayed: number;
  epoch: string;
  seq: number;
  since: Position;
}

export class SubscriptionManager {
  constructor(options: {
    socket: SocketHelper;
    api: MessagingApi;
    /** default 250 */
    leaveDelayMs?: number;
    clock?: Pick<Clock, 'setTimeout' | 'clearTimeout'>;
    onError?: ErrorSink;
  });
  leaveDelayMs: number;
  joinRoom(room: RoomRef & { displayName?: string }): Promise<Connection | null>;
  leaveRoom(churchId: string, conversationId: string): Promise<boolean>;
  setName(name: string): Promise<Connection[]>;
  rooms(): Array<RoomRef & { displayName: string; refs: number }>;
  isJoined(churchId: string, conversationId: string): boolean;
  onRejoin(fn: (event: RejoinEvent) => void): Unsubscribe;
  /** Missed frames that will not be replayed: refetch the room through REST. */
  onGap(fn: (event: GapEvent) => void): Unsubscribe;
  onResume(fn: (event: ResumeEvent) => void): Unsubscribe;
  /** The room's position, or `null` without positions. */
  position(churchId: string, conversationId: string): Position | null;
  dispose(): void;
}

// ---------------------------------------------------------------------------------------------

export class ConversationStore {
  constructor(options: {
    socket: SocketHelper;
    subscriptions: SubscriptionManager;
    api: MessagingApi;
    /** the signed-in person, to mark reactions `mine` */
    personId?: string | null | (() => string | null | undefined);
    onError?: ErrorSink;
  });
  open(options: RoomRef & { displayName?: string }): Promise<MessageView[]>;
  close(conversationId: string): Promise<boolean>;
  catchUp(conversationId: string): Promise<MessageView[]>;
  getMessages(conversationId: string): MessageView[];
  subscribe(conversationId: string, fn: (messages: MessageView[]) => void): Unsubscribe;
  send(message: { churchId?: string; conversationId: string; content: string; displayName?: string; messageType?: string }): Promise<Message>;
  save(message: { id?: string; conversationId: string; content: string; displayName?: string; messageType?: string }): Promise<Message>;
  remove(messageId: string): Promise<{ message: string }>;
  react(messageId: string, emoji: string): Promise<{ messageId: string; emoji: string; added: boolean }>;
  setReactions(conversationId: string, messageId: string, summaries: ReactionSummary[]): void;
  /** After a gap in an open conversation was caught up through REST; `refetched` counts the
   *  messages the catch-up added. */
  onGap(fn: (event: GapEvent & { refetched: number }) => void): Unsubscribe;
  dispose(): void;
}

// ---------------------------------------------------------------------------------------------

export function groupViewers(viewers: Viewer[]): ViewerGroup[];

export class PresenceStore {
  constructor(options: { socket: SocketHelper; onError?: ErrorSink });
  get(churchId: string, roomId: string): PresenceSnapshot | null;
  subscribe(churchId: string, roomId: string, fn: (snapshot: PresenceSnapshot) => void): Unsubscribe;
  clear(churchId: string, roomId: string): void;
  dispose(): void;
}

// ---------------------------------------------------------------------------------------------

export class NotificationService {
  constructor(options: {
    socket: SocketHelper;
    subscriptions: SubscriptionManager;
    api: MessagingApi;
    onError?: ErrorSink;
  });
  personId?: string;
  initialize(person: { churchId: string; personId: string }): Promise<Counts>;
  refresh(): Promise<Counts>;
  getCounts(): Counts;
  subscribe(fn: (counts: Counts) => void): Unsubscribe;
  cleanup(): Promise<void>;
  dispose(): void;
}

// ---------------------------------------------------------------------------------------------

export interface MessagingClientOptions extends Omit<SocketHelperOptions, 'url'> {
  /** REST base, default `<page origin>/messaging` */
  restBase?: string;
  /** WebSocket URL, default `ws(s)://<page host>/` */
  socketUrl?: string;
  getToken?: TokenSource;
  fetch?: typeof fetch;
  personId?: string | null | (() => string | null | undefined);
  leaveDelayMs?: number;
  api?: MessagingApi;
}

export interface MessagingClient {
  api: MessagingApi;
  socket: SocketHelper;
  subscriptions: SubscriptionManager;
  conversations: ConversationStore;
  presence: PresenceStore;
  notifications: NotificationService;
  destroy(): void;
}

export function createMessagingClient(options?: MessagingClientOptions): MessagingClient;
