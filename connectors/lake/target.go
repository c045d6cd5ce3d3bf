package lake

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/plumecdc/plume/pkg/target"
)

// Keys of the lake's own files under its root.
const (
	commitsDir  = "_plume/commits/"
	latestKey   = "_plume/latest.json"
	pendingKey  = "_plume/pending.json"
	icebergKey  = "_plume/iceberg.json"
	manifestVer = 1
)

func commitKey(seq int64) string { return fmt.Sprintf("%s%020d.json", commitsDir, seq) }

// manifest is one commit: the files it makes visible and where every Kafka
// partition stands after it. See the package documentation for the
// invariants.
type manifest struct {
	Version  int       `json:"version"`
	Seq      int64     `json:"seq"`
	Time     time.Time `json:"time"`
	Pipeline string    `json:"pipeline"`
	Target   string    `json:"target"`
	Files    []fileRef `json:"files"`
	// Offsets is cumulative: topic -> partition -> next offset to read.
	Offsets map[string]map[string]int64 `json:"offsets"`
	// Tables is cumulative: every table's columns and their types.
	Tables map[string][]column `json:"tables"`
}

type fileRef struct {
	Path        string `json:"path"` // key relative to the lake's root
	Table       string `json:"table"`
	Rows        int64  `json:"rows"`
	Bytes       int64  `json:"bytes"`
	Topic       string `json:"topic"`
	Partition   int32  `json:"partition"`
	FirstOffset int64  `json:"first_offset"`
	LastOffset  int64  `json:"last_offset"`
}

type column struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// pending is written before a commit's data files; a crash leaves it
// behind with the names of files that no manifest lists.
type pending struct {
	Seq   int64    `json:"seq"`
	Files []string `json:"files"`
}

// Target writes routed changes as Parquet files plus commit manifests, and
// optionally appends the files to Iceberg tables.
type Target struct {
	set      *settings
	pipeline string
	name     string
	log      *slog.Logger
	store    storage
	catalog  *sourceCatalog
	ice      *icebergSink

	// Committed state, from the latest manifest.
	seq     int64
	offsets target.Offsets
	tables  map[string]*tableState

	// Test hooks: fail between the steps of a commit.
	hookAfterData     func() error
	hookAfterManifest func() error
}

// RowsOnly reports that the target reads only the messages' rows and
// attributes (files hold them, not the CloudEvent), so the delivery layer
// need not keep the consumed records (target.RowsOnly): a batch of 10,000
// changes holds about 13 MB less.
func (t *Target) RowsOnly() bool { return true }

// DeliveryDefaults makes one batch, and so one commit, hold up to 10,000
// changes or 4 MiB of records or 10 s of changes: files roll by size and
// by time through the delivery block (see docs/targets/lake.md).
func (t *Target) DeliveryDefaults() target.DeliveryDefaults {
	return target.DeliveryDefaults{BatchMaxEvents: DefaultBatchMaxEvents, BatchMaxBytes: DefaultBatchMaxBytes, BatchLinger: DefaultBatchLinger}
}

// Open loads the committed state and returns the committed offsets, which
// are authoritative (target.Target): the latest manifest says exactly what
// is in the lake.
func (t *Target) Open(ctx context.Context) (target.Offsets, error) {
	if t.store == nil {
		if t.set.local != "" {
			t.store = &localStorage{root: t.set.local}
		} else {
			st, err := newS3Storage(t.set)
			if err != nil {
				return nil, target.Permanent(err)
			}
			t.store = st
		}
	}
	m, err := t.latestManifest(ctx)
	if err != nil {
		return nil, t.classify(err)
	}
	t.seq, t.offsets, t.tables = 0, target.Offsets{}, map[string]*tableState{}
	if m != nil {
		if m.Pipeline != t.pipeline || m.Target != t.name {
			return nil, target.Permanent(fmt.Errorf("lake %s holds the commits of pipeline %q target %q; one writer per path", t.set.describe(), m.Pipeline, m.Target))
		}
		t.seq = m.Seq
		for topic, parts := range m.Offsets {
			for p, off := range parts {
				n, err := strconv.ParseInt(p, 10, 32)
				if err != nil {
					return nil, target.Permanent(fmt.Errorf("manifest %d: bad partition %q", m.Seq, p))
				}
				t.offsets[target.TopicPartition{Topic: topic, Partition: int32(n)}] = off
			}
		}
		for name, cols := range m.Tables {
			ts := newTableState()
			for _, c := range cols {
				ct, err := parseColType(c.Type)
				if err != nil {
					return nil, target.Permanent(fmt.Errorf("manifest %d: table %s column %s: %v", m.Seq, name, c.Name, err))
				}
				ts.add(c.Name, ct)
			}
			t.tables[name] = ts
		}
	}
	if err := t.cleanPending(ctx); err != nil {
		return nil, t.classify(err)
	}
	if t.set.iceberg != nil && t.ice == nil {
		ice, err := newIcebergSink(ctx, t.set, t.store, t.log)
		if err != nil {
			return nil, err
		}
		t.ice = ice
	}
	if err := t.catchUpIceberg(ctx); err != nil {
		return nil, t.classify(err)
	}
	t.log.Info("lake opened", "path", t.set.describe(), "commit", t.seq, "partitions", len(t.offsets))
	return cloneOffsets(t.offsets), nil
}

// latestManifest finds the newest commit: the latest.json hint is only a
// starting point for the listing (it is written after the manifest, so it
// is never ahead of it), which keeps Open cheap however many commits exist.
func (t *Target) latestManifest(ctx context.Context) (*manifest, error) {
	var hint struct {
		Seq int64 `json:"seq"`
	}
	if b, err := t.store.Get(ctx, latestKey); err == nil {
		_ = json.Unmarshal(b, &hint)
	} else if !errors.Is(err, errNotFound) {
		return nil, err
	}
	start := ""
	if hint.Seq > 0 {
		start = commitKey(hint.Seq - 1) // list the hinted commit too
	}
	keys, err := t.store.List(ctx, commitsDir, start, 0)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 && hint.Seq > 0 {
		// The hint points past the listing (should not happen): list all.
		if keys, err = t.store.List(ctx, commitsDir, "", 0); err != nil {
			return nil, err
		}
	}
	if len(keys) == 0 {
		return nil, nil
	}
	return t.readManifest(ctx, keys[len(keys)-1])
}

func (t *Target) readManifest(ctx context.Context, key string) (*manifest, error) {
	b, err := t.store.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, target.Permanent(fmt.Errorf("manifest %s is corrupt: %v", key, err))
	}
	if m.Version != manifestVer {
		return nil, target.Permanent(fmt.Errorf("manifest %s has version %d; this Plume writes %d", key, m.Version, manifestVer))
	}
	return &m, nil
}

// cleanPending removes the data files of a commit that a crash interrupted
// before its manifest: no manifest lists them, so no reader that honours
// the manifests ever saw them. A pending file whose seq is committed is
// just stale.
func (t *Target) cleanPending(ctx context.Context) error {
	b, err := t.store.Get(ctx, pendingKey)
	if errors.Is(err, errNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var p pending
	if err := json.Unmarshal(b, &p); err == nil && p.Seq > t.seq {
		for _, f := range p.Files {
			if err := t.store.Delete(ctx, f); err != nil {
				return err
			}
		}
		t.log.Info("removed the files of an interrupted commit", "commit", p.Seq, "files", len(p.Files))
	}
	return t.store.Delete(ctx, pendingKey)
}

// Apply writes the batch and commits it. It returns nil only once the
// manifest listing the batch's files (and the offsets after them) exists,
// and, with Iceberg, once the files are appended there too.
//
// Exactly-once invariants (why a replay never duplicates and a crash never
// loses):
//  1. A file is visible to readers only through a manifest, and a manifest
//     is one atomic PUT (S3) or rename/link (local) written after every
//     file it lists: a manifest never lists a partial or missing file.
//  2. A manifest carries the offsets after its files, cumulatively; Open
//     returns the latest manifest's offsets and the delivery layer resumes
//     exactly there. Messages below those offsets (a replayed batch) are
//     dropped here, so no change is written to two manifests.
//  3. Manifests are numbered densely and created with put-if-absent: a
//     second writer (a zombie after a failover) cannot overwrite commit N;
//     it fails, and its files stay unlisted.
//  4. Data file names are deterministic from (table partition, topic,
//     partition, first offset, last offset): a rewrite of the same range
//     after a crash replaces the same object, and an interrupted commit's
//     files are deleted by the next Open (pending.json), so orphans do not
//     accumulate.
func (t *Target) Apply(ctx context.Context, b *target.Batch) error {
	// Drop what an earlier commit already holds (invariant 2).
	keep := make([]int, 0, len(b.Messages))
	for i := range b.Messages {
		m := &b.Messages[i]
		if next, ok := t.offsets[target.TopicPartition{Topic: m.Topic, Partition: m.Partition}]; ok && m.Offset < next {
			continue
		}
		keep = append(keep, i)
	}
	if len(keep) > 0 {
		files, failed, err := t.encode(ctx, b, keep)
		if err != nil {
			return t.classify(err)
		}
		if len(failed) > 0 {
			// Nothing is written: the layer dead-letters these and calls
			// Apply again with the rest and the same offsets.
			return &target.RecordErrors{Failed: failed}
		}
		if err := t.commit(ctx, files, b.Offsets); err != nil {
			return t.classify(err)
		}
	}
	// The Iceberg append of a commit is finished even when a shutdown
	// cancels ctx (bounded by icebergFinishTimeout), so that a graceful
	// stop leaves every Iceberg table in step with the manifests. A crash
	// is covered by the catch-up in Open.
	ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), icebergFinishTimeout)
	defer cancel()
	return t.classify(t.catchUpIceberg(ictx))
}

// icebergFinishTimeout bounds the Iceberg append that Apply finishes after
// its context is cancelled.
const icebergFinishTimeout = 30 * time.Second

// commit writes files, then the manifest (see Apply).
func (t *Target) commit(ctx context.Context, files []*dataFile, batchOffsets target.Offsets) error {
	seq := t.seq + 1
	p := pending{Seq: seq}
	for _, f := range files {
		p.Files = append(p.Files, f.ref.Path)
	}
	pb, _ := json.Marshal(p)
	if err := t.store.Put(ctx, pendingKey, pb); err != nil {
		return err
	}
	if err := t.putFiles(ctx, files); err != nil {
		return err
	}
	if t.hookAfterData != nil {
		if err := t.hookAfterData(); err != nil {
			return err
		}
	}
	offsets := cloneOffsets(t.offsets)
	for tp, o := range batchOffsets {
		if o > offsets[tp] {
			offsets[tp] = o
		}
	}
	m := manifest{Version: manifestVer, Seq: seq, Time: time.Now().UTC(), Pipeline: t.pipeline, Target: t.name,
		Offsets: map[string]map[string]int64{}, Tables: map[string][]column{}}
	for _, f := range files {
		m.Files = append(m.Files, f.ref)
	}
	for tp, o := range offsets {
		if m.Offsets[tp.Topic] == nil {
			m.Offsets[tp.Topic] = map[string]int64{}
		}
		m.Offsets[tp.Topic][strconv.Itoa(int(tp.Partition))] = o
	}
	for name, ts := range t.tables {
		m.Tables[name] = ts.columns()
	}
	mb, err := json.MarshalIndent(m, "", " ")
	if err != nil {
		return err
	}
	if err := t.store.PutIfAbsent(ctx, commitKey(seq), mb); err != nil {
		if !errors.Is(err, errExists) {
			return err
		}
		// Our own earlier attempt may have succeeded without us hearing
		// back: then the manifest lists the same files and offsets.
		old, gerr := t.readManifest(ctx, commitKey(seq))
		if gerr != nil {
			return gerr
		}
		if !sameCommit(old, &m) {
			return errors.New("commit " + strconv.FormatInt(seq, 10) + " was written by another writer; is a second instance of this target running?")
		}
	}
	// Committed. Everything below is an optimisation.
	t.seq, t.offsets = seq, offsets
	if t.hookAfterManifest != nil {
		if err := t.hookAfterManifest(); err != nil {
			return err
		}
	}
	hb, _ := json.Marshal(map[string]int64{"seq": seq})
	if err := t.store.Put(ctx, latestKey, hb); err != nil {
		t.log.Warn("write latest.json (a hint only)", "err", err)
	}
	if err := t.store.Delete(ctx, pendingKey); err != nil {
		t.log.Warn("remove pending.json", "err", err)
	}
	return nil
}

// putFiles uploads files, up to four at a time.
func (t *Target) putFiles(ctx context.Context, files []*dataFile) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, 4)
	)
	for _, f := range files {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := t.store.Put(ctx, f.ref.Path, f.data); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func sameCommit(a, b *manifest) bool {
	if len(a.Files) != len(b.Files) {
		return false
	}
	for i := range a.Files {
		if a.Files[i] != b.Files[i] {
			return false
		}
	}
	ao, _ := json.Marshal(a.Offsets)
	bo, _ := json.Marshal(b.Offsets)
	return bytes.Equal(ao, bo)
}

// catchUpIceberg appends to Iceberg every commit it does not have yet.
func (t *Target) catchUpIceberg(ctx context.Context) error {
	if t.ice == nil {
		return nil
	}
	return t.ice.catchUp(ctx, t.seq, t.readManifest)
}

// classify marks errors retrying cannot fix.
func (t *Target) classify(err error) error {
	if err == nil || target.IsPermanent(err) {
		return err
	}
	var re *target.RecordErrors
	if errors.As(err, &re) {
		return err
	}
	if permanentS3(err) {
		return target.Permanent(err)
	}
	return err
}

// Close releases the Iceberg catalog connection.
func (t *Target) Close() error {
	if t.ice != nil {
		err := t.ice.close()
		t.ice = nil
		return err
	}
	return nil
}
