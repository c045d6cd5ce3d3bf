// Package search is the "search" target: it keeps Elasticsearch (7, 8) or
// OpenSearch (1, 2) indexes in step with the routed changes, through the
// `_bulk` REST API over plain net/http (no client library).
//
// Every write is versioned externally: the document `_id` is the primary key
// and the version is the Kafka offset of the change's record plus one.
// Capture writes every change of a key to one partition in source commit
// order, so per key the version grows with the source position; a replayed
// or reordered older write gets a 409 version conflict, which the target
// counts as applied. Replays are therefore harmless and the index converges
// to the source exactly once in effect, with no document ever going back to
// an older version.
//
// Every item of every bulk response is examined: version conflicts count as
// applied, 429 and 5xx items are retried (only they are sent again), mapping
// and parse errors are dead-lettered with the server's reason, and a batch
// is reported done (so its offsets are checkpointed) only when every item is
// one of those.
//
// See docs/targets/search.md for the configuration and the contract.
package search
