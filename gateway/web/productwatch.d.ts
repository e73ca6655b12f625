// Type declarations for productwatch.js, the client of productwatch's
// /websocket and REST list. The protocol is api/asyncapi.yaml.

/** A product, in the REST API's field names. */
export interface Product {
  productId: number;
  manufacturer: string;
  productName: string;
  /** A decimal amount followed by an ISO 4217 code: "12.50EUR". */
  pricePerUnit: string;
  unitsAvailable: number;
  version: number;
  updatedAt: string;
}

/**
 * A product moving on: a live change (INSERT, UPDATE, DELETE, with seq and
 * changedAt), or a SNAPSHOT (subscribe, resume, loadAll). For a DELETE,
 * product is the last state and version is one more than its version.
 */
export interface Change {
  action: "INSERT" | "UPDATE" | "DELETE" | "SNAPSHOT";
  productId: number;
  version: number;
  product: Product;
  /** The change log's sequence (live changes only). */
  seq?: number;
  /** The commit-time clock (live changes only). */
  changedAt?: string;
}

/** What the client holds of a product: its newest version (deletes kept). */
export interface ProductState {
  action: Change["action"];
  version: number;
  product: Product;
  /** Internal: when it was last applied. */
  generation: number;
}

/** An error the gateway sent (or reload_failed, from the client itself). */
export interface ServerError {
  type: "error";
  code:
    | "invalid_json" | "invalid_command" | "unknown_command" | "invalid_product_id" | "too_many_ids"
    | "too_many_subscriptions" | "rate_limited" | "binary_frame" | "not_found" | "resync" | "unavailable"
    | "reload_failed" | string;
  message: string;
  id?: string | number;
  productIDs?: number[];
  /** The error is about the watch-all subscription. */
  all?: true;
}

/** The connection state. */
export type Status = "connecting" | "live" | "reconnecting" | "closed";

/** History was lost: the whole list (all) or these products. */
export type Resync = { all: true } | { productIDs: number[] };

/** A reconnect was scheduled after the socket closed with code. */
export interface Reconnect {
  /** 0 for the first retry after a close. */
  attempt: number;
  /** Milliseconds until the attempt: random in [0, min(maxDelay, minDelay * 2^attempt)). */
  delay: number;
  code: number;
  reason: string;
}

export interface ProductWatchEventMap {
  status: CustomEvent<Status>;
  change: CustomEvent<Change>;
  servererror: CustomEvent<ServerError>;
  resync: CustomEvent<Resync>;
  reconnect: CustomEvent<Reconnect>;
}

/** A WebSocket constructor: the browser's, or Node's `ws` package. */
export interface WebSocketConstructor {
  new (url: string): {
    readonly readyState: number;
    onopen: ((ev: any) => void) | null;
    onmessage: ((ev: { data: any }) => void) | null;
    onerror: ((ev: any) => void) | null;
    onclose: ((ev: { code: number; reason: string }) => void) | null;
    send(data: string): void;
    close(code?: number, reason?: string): void;
  };
}

export interface ProductWatchOptions {
  /** First reconnect delay ceiling, ms (default 250); it doubles per attempt. */
  minDelay?: number;
  /** Largest reconnect delay ceiling, ms (default 10000). */
  maxDelay?: number;
  /** WebSocket implementation (default: globalThis.WebSocket). */
  WebSocket?: WebSocketConstructor;
  /** fetch implementation for loadAll (default: globalThis.fetch). */
  fetch?: typeof fetch;
  /** Origin of the REST API (default: the WebSocket URL's, over http(s)). */
  restURL?: string;
  /** Products per REST page in loadAll (default 500; the API allows 1–1000). */
  pageSize?: number;
  /**
   * Batched framing (default false): open /websocket?batch=1, so that the
   * events waiting together at the gateway come as one JSON array message
   * (fewer messages for a busy client). Events are applied and dispatched
   * one by one either way.
   */
  batch?: boolean;
}

/**
 * A live view of products. It connects at once, reconnects by itself with
 * exponential backoff and full jitter, and resumes on every reconnect (the
 * versions held for watched products; since for watch-all). It keeps only
 * the newest version of each product: an older or equal one never
 * overwrites a newer one.
 */
export class ProductWatch extends EventTarget {
  /** url: the gateway's /websocket (default: this page's host). */
  constructor(url?: string, options?: ProductWatchOptions);

  /** The newest state of each product seen (deleted ones kept, action "DELETE"). */
  readonly products: Map<number, ProductState>;
  /** The connection state. */
  readonly state: Status;
  /**
   * The highest change seq seen (or acknowledged): the watch-all resume
   * point; 0 when none. A resume from it gets every change with a higher
   * seq, not a late commit of a lower one: see loadAll.
   */
  readonly since: number;
  readonly url: string;
  readonly restURL: string;

  /** Subscribe to these products; the gateway sends each one's current state first. */
  watch(ids: Iterable<number | string>): void;
  /** Stop watching these products (only this client's interest goes). */
  unwatch(ids: Iterable<number | string>): void;
  /** Receive the changes of every product, including products created later. */
  watchAll(): void;
  /** Stop watching every product (per-product watches stay). */
  unwatchAll(): void;
  /**
   * Read every product over REST (GET /products, following next) and apply
   * each as a SNAPSHOT; products held but no longer listed become DELETEs.
   * Call it after watchAll. Resolves to the number of products read.
   * Once called, the client calls it again by itself (in the background;
   * a failure is a "servererror" with code "reload_failed") after every
   * acknowledged watch-all resume and after a resync: the resume by since
   * cannot see a change whose transaction took a lower seq than since and
   * committed while the client was away (seq order is not commit order),
   * and the list read after the subscription is live covers it.
   */
  loadAll(options?: { onPage?: (products: Product[]) => void; signal?: AbortSignal }): Promise<number>;
  /** Take a change in if it is newer than what is held; dispatches "change". */
  apply(change: Change): boolean;
  /** The delay before reconnect attempt n, ms. */
  backoff(n: number): number;
  /** Stop for good. */
  close(): void;

  addEventListener<K extends keyof ProductWatchEventMap>(
    type: K,
    listener: (this: ProductWatch, ev: ProductWatchEventMap[K]) => any,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof ProductWatchEventMap>(
    type: K,
    listener: (this: ProductWatch, ev: ProductWatchEventMap[K]) => any,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}
