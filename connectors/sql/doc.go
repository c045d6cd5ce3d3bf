// Package sql is the "sql" target: it keeps one table of a PostgreSQL or
// MySQL/MariaDB database in sync with the rows routed to it, exactly once.
//
// Each batch is applied in one transaction: the messages, coalesced per key
// (the last state of a key wins), as multi-row upserts and deletes, then the
// batch's Kafka offsets into the offsets table (default plume_offsets), then
// COMMIT. Offsets in the target DB are written in the same transaction as
// the rows they cover; therefore after any crash the stored offset is
// exactly the first record not applied. Open returns those offsets to the
// delivery layer as authoritative, and Apply skips messages below them, so
// a replay is a no-op.
//
// The dialect follows from the DSN; see docs/targets/sql.md for the
// configuration, type conversions and error classes.
package sql
