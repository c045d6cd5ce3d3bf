// Package http is the "http" target: it POSTs each routed change as a
// CloudEvent to a webhook or API (an ERP, typically), following the
// CloudEvents HTTP protocol binding in binary, structured or batch mode.
//
// Delivery is at least once: a batch is retried until every message is
// delivered (2xx) or rejected (4xx, dead-lettered), and a retry after an
// error or a crash may send a message again. Every request carries an
// Idempotency-Key derived from the CloudEvents source and id (stable across
// replays), so a receiver that deduplicates on it (or on source + id) sees
// each change exactly once in effect. Requests run concurrently up to
// concurrency, but never two at a time for the same subject (primary key),
// and per subject in order.
//
// See docs/targets/http.md for the configuration and the contract. The
// subpackage receiver is a small CloudEvents receiver for tests and
// benchmarks that counts deliveries and duplicates.
package http
