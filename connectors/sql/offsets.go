package sql

import (
	"context"

	"github.com/plumecdc/plume/pkg/target"
)

// The offsets table (default plume_offsets) holds, per (pipeline, target,
// topic, kafka_partition), next_offset: the offset of the first Kafka record
// this target has not applied. It is written in the same transaction as the
// rows (see Apply), so it is always exactly right, and Open returns it to
// the delivery layer as authoritative. Schema: see offsetsDDL in
// postgres.go and mysql.go, and docs/targets/sql.md.

// createOffsetsTable creates the offsets table if it is missing.
func (t *Target) createOffsetsTable(ctx context.Context) error {
	if ok, err := t.db.tableExists(ctx, t.set.offsets); err != nil || ok {
		return err
	}
	tx, err := t.db.begin(ctx)
	if err != nil {
		return err
	}
	defer t.rollback(tx)
	if err := tx.exec(ctx, t.db.offsetsDDL(t.set.offsets)); err != nil {
		return err
	}
	return tx.commit(ctx)
}

// readOffsets returns the stored offsets of this (pipeline, target). With
// lock, the rows are locked FOR UPDATE until the transaction ends: a second
// instance of the same target (a zombie after a failover) waits, then sees
// the offsets the first one committed and skips what it already applied.
func (t *Target) readOffsets(ctx context.Context, tx txn, lock bool) (target.Offsets, error) {
	q := "SELECT topic, kafka_partition, next_offset FROM " + quoteTable(t.db, t.set.offsets) +
		" WHERE pipeline = " + t.db.param(1, nil) + " AND target = " + t.db.param(2, nil)
	if lock {
		q += " FOR UPDATE"
	}
	offs := target.Offsets{}
	err := tx.query(ctx, q, []any{t.pipeline, t.name}, func(scan func(...any) error) error {
		var (
			topic string
			part  int32
			next  int64
		)
		if err := scan(&topic, &part, &next); err != nil {
			return err
		}
		offs[target.TopicPartition{Topic: topic, Partition: part}] = next
		return nil
	})
	if err != nil {
		return nil, err
	}
	return offs, nil
}

// writeOffsets upserts offs. An offset never moves backwards (GREATEST), so
// re-applying an old batch cannot rewind the target.
func (t *Target) writeOffsets(ctx context.Context, tx txn, offs target.Offsets) error {
	if len(offs) == 0 {
		return nil
	}
	tps := offs.Sorted() // a stable order: concurrent writers lock rows alike
	args := make([]any, 0, 5*len(tps))
	for _, tp := range tps {
		args = append(args, t.pipeline, t.name, tp.Topic, tp.Partition, offs[tp])
	}
	return tx.exec(ctx, t.db.offsetsUpsert(t.set.offsets, len(tps)), args...)
}
