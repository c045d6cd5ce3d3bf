package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/config"
	plumekafka "github.com/plumecdc/plume/pkg/kafka"
	"github.com/plumecdc/plume/pkg/testharness"
)

// Raw limits: the same backlog read by the bare client libraries Plume is
// built on, and the same records written by a bare producer. They bound what
// Plume can reach on this machine.

// RawResult is one raw-limit measurement.
type RawResult struct {
	What      string  `json:"what"`
	Events    int64   `json:"events"`
	Seconds   float64 `json:"seconds"`
	EventsSec float64 `json:"events_per_sec"`
	MBSec     float64 `json:"mb_per_sec,omitempty"`
	Err       string  `json:"error,omitempty"`
}

func rawResult(what string, n int64, d time.Duration, bytes int64, err error) RawResult {
	r := RawResult{What: what, Events: n, Seconds: d.Seconds()}
	if d > 0 {
		r.EventsSec = float64(n) / d.Seconds()
		r.MBSec = float64(bytes) / d.Seconds() / 1e6
	}
	if err != nil {
		r.Err = err.Error()
	}
	return r
}

// ---- PostgreSQL: pglogrepl, pgoutput, read and discard ----

// pgCreateSlot creates a logical pgoutput slot (before the backlog is
// written, so the backlog is in it).
func pgCreateSlot(ctx context.Context, pg *testharness.PG, db, slot string) error {
	c, err := pgconn.Connect(ctx, pg.ReplicationDSN(db))
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = pglogrepl.CreateReplicationSlot(ctx, c, slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "NOEXPORT_SNAPSHOT"})
	return err
}

// pgRawRead streams slot with the publication pub until n inserts were read.
func pgRawRead(ctx context.Context, pg *testharness.PG, db, slot, pub string, n int64, timeout time.Duration) RawResult {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := pgconn.Connect(ctx, pg.ReplicationDSN(db))
	if err != nil {
		return rawResult("pglogrepl reader", 0, 0, 0, err)
	}
	defer c.Close(context.Background())
	start := time.Now()
	err = pglogrepl.StartReplication(ctx, c, slot, 0, pglogrepl.StartReplicationOptions{
		Mode:       pglogrepl.LogicalReplication,
		PluginArgs: []string{"proto_version '2'", "publication_names '" + pub + "'", "messages 'true'"},
	})
	if err != nil {
		return rawResult("pglogrepl reader", 0, 0, 0, err)
	}
	var rows, bytes int64
	var pos pglogrepl.LSN
	nextStatus := time.Now().Add(5 * time.Second)
	for rows < n {
		if time.Now().After(nextStatus) {
			_ = pglogrepl.SendStandbyStatusUpdate(ctx, c, pglogrepl.StandbyStatusUpdate{WALWritePosition: pos})
			nextStatus = time.Now().Add(5 * time.Second)
		}
		msg, err := c.ReceiveMessage(ctx)
		if err != nil {
			return rawResult("pglogrepl reader", rows, time.Since(start), bytes, err)
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok || len(cd.Data) == 0 {
			continue
		}
		switch cd.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(cd.Data[1:])
			if err == nil && ka.ReplyRequested {
				nextStatus = time.Time{}
			}
		case pglogrepl.XLogDataByteID:
			x, err := pglogrepl.ParseXLogData(cd.Data[1:])
			if err != nil {
				return rawResult("pglogrepl reader", rows, time.Since(start), bytes, err)
			}
			bytes += int64(len(x.WALData))
			if len(x.WALData) > 0 && x.WALData[0] == 'I' {
				rows++
			}
			pos = x.WALStart + pglogrepl.LSN(len(x.WALData))
		}
	}
	return rawResult("pglogrepl reader", rows, time.Since(start), bytes, nil)
}

// ---- MariaDB: go-mysql BinlogSyncer, read and discard ----

// binlogPos is SHOW MASTER STATUS, taken before the backlog is written.
func binlogPos(ctx context.Context, m *testharness.MySQL) (mysql.Position, error) {
	d, err := sql.Open("mysql", m.DSN(""))
	if err != nil {
		return mysql.Position{}, err
	}
	defer d.Close()
	rows, err := d.QueryContext(ctx, "SHOW MASTER STATUS")
	if err != nil {
		return mysql.Position{}, err
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	if !rows.Next() {
		return mysql.Position{}, fmt.Errorf("SHOW MASTER STATUS: no row (binlog off?)")
	}
	vals := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return mysql.Position{}, err
	}
	pos, err := strconv.ParseUint(string(vals[1]), 10, 32)
	if err != nil {
		return mysql.Position{}, fmt.Errorf("SHOW MASTER STATUS: position %q: %w", vals[1], err)
	}
	return mysql.Position{Name: string(vals[0]), Pos: uint32(pos)}, nil
}

// mysqlRawRead reads the binlog from pos with go-mysql's BinlogSyncer (rows
// decoded, as any go-mysql user gets them) until n rows of table were read.
func mysqlRawRead(ctx context.Context, m *testharness.MySQL, pos mysql.Position, table string, n int64, timeout time.Duration) RawResult {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: 990000 + uint32(time.Now().UnixNano()%10000), Flavor: m.Flavor,
		Host: m.Host, Port: uint16(m.Port), User: m.User, Password: m.Password,
		DisableRetrySync: true, EventCacheCount: 64,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	defer syncer.Close()
	start := time.Now()
	st, err := syncer.StartSync(pos)
	if err != nil {
		return rawResult("go-mysql BinlogSyncer", 0, 0, 0, err)
	}
	var rows, bytes int64
	for rows < n {
		ev, err := st.GetEvent(ctx)
		if err != nil {
			return rawResult("go-mysql BinlogSyncer", rows, time.Since(start), bytes, err)
		}
		bytes += int64(ev.Header.EventSize)
		if re, ok := ev.Event.(*replication.RowsEvent); ok && string(re.Table.Table) == table {
			rows += int64(len(re.Rows))
		}
	}
	return rawResult("go-mysql BinlogSyncer", rows, time.Since(start), bytes, nil)
}

// ---- Kafka: franz-go producing the same records ----

// rawProduce writes n records cycling through sample (Plume's own records:
// same keys, headers, values, sizes), with the capture stage's producer
// settings: zstd, acks=all, idempotent and transactional, 5,000 records
// and one checkpoint record per transaction, 16 MiB buffered.
func rawProduce(ctx context.Context, brokers []string, a *admin, name string, sample []*kgo.Record, n int64, timeout time.Duration) RawResult {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	topic, cpTopic := name+".data", name+".checkpoints"
	for _, tp := range []string{topic, cpTopic} {
		if err := a.createTopic(ctx, tp); err != nil {
			return rawResult("franz-go producer", 0, 0, 0, err)
		}
	}
	// Plume's client options: the seed brokers and its default codec
	// (zstd's fastest level, through the same compressor).
	opts, err := plumekafka.ClientConfig{Brokers: brokers}.Opts()
	if err != nil {
		return rawResult("franz-go producer", 0, 0, 0, err)
	}
	cl, err := kgo.NewClient(append(opts,
		kgo.TransactionalID(name), kgo.TransactionTimeout(5*time.Minute),
		kgo.MaxBufferedBytes(16<<20), kgo.ProducerBatchMaxBytes(1<<20), kgo.RecordRetries(20))...)
	if err != nil {
		return rawResult("franz-go producer", 0, 0, 0, err)
	}
	defer cl.Close()
	var perr error
	cb := func(_ *kgo.Record, err error) {
		if err != nil && perr == nil {
			perr = err
		}
	}
	const perTxn = config.DefaultBatchMaxEvents
	var bytes int64
	start := time.Now()
	for sent := int64(0); sent < n; {
		if err := cl.BeginTransaction(); err != nil {
			return rawResult("franz-go producer", sent, time.Since(start), bytes, err)
		}
		for i := 0; i < perTxn && sent < n; i++ {
			s := sample[sent%int64(len(sample))]
			r := &kgo.Record{Topic: topic, Key: s.Key, Value: s.Value, Headers: s.Headers}
			bytes += int64(len(s.Key) + len(s.Value))
			cl.Produce(ctx, r, cb)
			sent++
		}
		cl.Produce(ctx, &kgo.Record{Topic: cpTopic, Key: []byte("checkpoint"), Value: []byte(fmt.Sprint(sent))}, cb)
		if err := cl.Flush(ctx); err != nil {
			return rawResult("franz-go producer", sent, time.Since(start), bytes, err)
		}
		if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
			return rawResult("franz-go producer", sent, time.Since(start), bytes, err)
		}
		if perr != nil {
			return rawResult("franz-go producer", sent, time.Since(start), bytes, perr)
		}
	}
	return rawResult("franz-go producer", n, time.Since(start), bytes, nil)
}
