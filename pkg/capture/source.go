// Package capture moves committed row changes from a Source into Kafka,
// exactly once: every Kafka transaction holds whole source transactions plus
// the source checkpoint that follows them, so data and position commit
// atomically, and the source is acknowledged only after that commit.
package capture

import (
	"context"

	"github.com/plumecdc/plume/pkg/event"
)

// Source reads committed row changes from one database: first a snapshot
// (when the checkpoint says one is due), then the change stream.
//
// The checkpoint is the source's own opaque encoding of "where to resume":
// stream position, and snapshot progress while a snapshot runs. Capture
// stores it atomically with the events it covers and hands the last committed
// one back to Run after a restart.
type Source interface {
	// Run emits changes until ctx is cancelled or an error occurs. from is
	// the last committed checkpoint, or nil on the first start. Run must
	// resume strictly after from: every change up to the Commit that carried
	// from is already in Kafka.
	Run(ctx context.Context, from []byte, em Emitter) error
	// Ack reports that the transaction whose Commit carried cp, and all
	// before it, are committed in Kafka. The source may now release them at
	// the database (PostgreSQL: confirm the LSN). Ack is called from another
	// goroutine than Run and must be safe for that; acks arrive in order.
	Ack(cp []byte)
	// Close releases the source's connections. It is called after Run returns.
	Close() error
}

// Emitter receives a source's changes, grouped into transactions.
// Its methods are called from one goroutine at a time (Run's, or workers that
// serialise their calls).
type Emitter interface {
	// Emit adds one change to the current source transaction; the first Emit
	// after a Commit opens the next one. It may block to apply backpressure.
	// Emit keeps nothing of c once it returns: not c, its SourceFields, its
	// Before and After, nor the strings and byte slices in them. A source
	// may reuse all of it for its next changes (the MySQL source's values
	// point into binlog packets it reads the next events into). An Emitter
	// that keeps changes copies them (event.CloneImage for the images).
	Emit(ctx context.Context, c *event.Change) error
	// Commit closes the current source transaction (it may have no changes,
	// for a heartbeat or a snapshot-progress step); cp is the checkpoint to
	// resume from after it.
	Commit(ctx context.Context, cp []byte) error
}
