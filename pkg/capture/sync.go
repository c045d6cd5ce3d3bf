package capture

import "context"

// Syncer is implemented by Emitters that can make a checkpoint durable on
// request. Capture's Kafka producer implements it.
type Syncer interface {
	// Sync is Commit followed by an immediate commit of the open Kafka
	// transaction: it returns nil only once cp (and everything emitted
	// before it) is committed, and the source has been acknowledged.
	Sync(ctx context.Context, cp []byte) error
}

// Sync closes the current source transaction with cp, like em.Commit, and
// returns once cp is committed in Kafka if em can do that (Syncer);
// otherwise it is em.Commit.
//
// Commit alone only marks a source transaction boundary: the Kafka
// transaction holding it commits later (BatchLinger, BatchMaxEvents), and
// only at a later boundary if the source emits meanwhile. A source whose
// restart behaviour depends on a checkpoint having been committed - a first
// start that fixes the position the stream begins at - must Sync it before
// it emits anything.
func Sync(ctx context.Context, em Emitter, cp []byte) error {
	if s, ok := em.(Syncer); ok {
		return s.Sync(ctx, cp)
	}
	return em.Commit(ctx, cp)
}

// producer.Sync (producer.go) waits for every record of the open Kafka
// transaction (commitLocked flushes before EndTransaction). Called before
// the source emitted anything, the transaction holds only the checkpoint
// record, whose partition the fence record of this run was just written to
// (Run, step 1), so nothing in it waits for a data topic that is still being
// created.
