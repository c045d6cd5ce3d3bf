// Package offsets is Plume's local checkpoint store, on Badger, under the
// pipeline's state_dir. It keeps:
//
//   - the capture checkpoint: a mirror of the last source checkpoint
//     committed to the Kafka checkpoint topic;
//   - one read offset per (target, topic, partition), so each target
//     advances on its own.
//
// Invariants:
//   - Every write is a synchronous Badger transaction (SyncWrites): when a
//     Save returns, the value survives a crash of the process or machine.
//   - All offsets of one target are written in one Badger transaction, so a
//     crash never leaves a target with some partitions advanced and others
//     not from the same batch.
//   - The store never leads the system it mirrors: callers save a capture
//     checkpoint only after its Kafka transaction committed, and a target's
//     offsets only after the target durably applied the records before them.
//     After a crash the store may therefore lag; it is reconciled at start
//     (capture: the checkpoint topic wins; transactional targets: the offsets
//     stored in the target win; other targets: the store is the record, and
//     replaying the lagged records is harmless because those targets are
//     idempotent by id).
package offsets

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/dgraph-io/badger/v4"

	"github.com/plumecdc/plume/pkg/target"
)

// Store is the Badger offset store of one pipeline.
type Store struct {
	db *badger.DB
}

const (
	captureKey   = "capture/checkpoint"
	targetPrefix = "target/" // target/<name>/<partition>/<topic> -> next offset (8 bytes BE)
)

// Open opens (or creates) the store in dir. It fails with a clear error when
// dir cannot be created or written.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("offset store: state_dir %q is not writable: %w", dir, err)
	}
	probe := filepath.Join(dir, ".write-test")
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		return nil, fmt.Errorf("offset store: state_dir %q is not writable: %w", dir, err)
	}
	_ = os.Remove(probe)
	opts := badger.DefaultOptions(dir).
		WithSyncWrites(true).
		WithLogger(nil).
		// Offsets are tiny: keep Badger's memory small (its defaults assume
		// a database, with a 256 MB block cache and 64 MB memtables). A
		// memtable holds batches of up to 15% of its size (157 KB), so
		// larger values go to the value log (ValueThreshold).
		WithMemTableSize(1 << 20).
		WithValueThreshold(32 << 10).
		WithNumMemtables(2).
		WithBlockCacheSize(1 << 20).
		WithIndexCacheSize(1 << 20).
		WithValueLogFileSize(16 << 20).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(4).
		WithNumCompactors(2)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("offset store in %q: %w", dir, err)
	}
	return &Store{db: db}, nil
}

// Close closes the store.
func (s *Store) Close() error { return s.db.Close() }

// LoadCapture returns the mirrored capture checkpoint, or nil.
func (s *Store) LoadCapture() ([]byte, error) { return s.get(captureKey) }

// SaveCapture durably stores the capture checkpoint.
func (s *Store) SaveCapture(cp []byte) error {
	return s.db.Update(func(txn *badger.Txn) error { return txn.Set([]byte(captureKey), cp) })
}

// ResetCapture removes the capture checkpoint.
func (s *Store) ResetCapture() error {
	return s.db.Update(func(txn *badger.Txn) error { return txn.Delete([]byte(captureKey)) })
}

func (s *Store) get(key string) ([]byte, error) {
	var out []byte
	err := s.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get([]byte(key))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		out, err = it.ValueCopy(nil)
		return err
	})
	return out, err
}

func targetKey(name string, tp target.TopicPartition) []byte {
	return []byte(targetPrefix + name + "/" + strconv.Itoa(int(tp.Partition)) + "/" + tp.Topic)
}

// TargetOffsets returns the stored offsets of a target (empty if none).
func (s *Store) TargetOffsets(name string) (target.Offsets, error) {
	out := target.Offsets{}
	prefix := []byte(targetPrefix + name + "/")
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			rest := strings.TrimPrefix(string(it.Item().Key()), string(prefix))
			part, topic, ok := strings.Cut(rest, "/")
			p, err := strconv.Atoi(part)
			if !ok || err != nil {
				return fmt.Errorf("offset store: malformed key %q", it.Item().Key())
			}
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			if len(v) != 8 {
				return fmt.Errorf("offset store: malformed value for %q", it.Item().Key())
			}
			out[target.TopicPartition{Topic: topic, Partition: int32(p)}] = int64(binary.BigEndian.Uint64(v))
		}
		return nil
	})
	return out, err
}

// SaveTargetOffsets durably stores offsets of a target, all in one
// transaction. Partitions not in o keep their stored offsets.
func (s *Store) SaveTargetOffsets(name string, o target.Offsets) error {
	return s.db.Update(func(txn *badger.Txn) error {
		for tp, off := range o {
			var v [8]byte
			binary.BigEndian.PutUint64(v[:], uint64(off))
			if err := txn.Set(targetKey(name, tp), v[:]); err != nil {
				return err
			}
		}
		return nil
	})
}

// ResetTarget deletes every stored offset of a target.
func (s *Store) ResetTarget(name string) error {
	o, err := s.TargetOffsets(name)
	if err != nil {
		return err
	}
	return s.db.Update(func(txn *badger.Txn) error {
		for tp := range o {
			if err := txn.Delete(targetKey(name, tp)); err != nil {
				return err
			}
		}
		return nil
	})
}
