package lake

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/plumecdc/plume/pkg/target"
)

// Snapshot summary properties Plume writes on every append.
const (
	summarySeq     = "plume.commit-seq" // the lake commit (manifest) the files came from
	summaryOffsets = "plume.offsets"    // JSON topic -> partition -> next offset after that commit
)

// icebergSink appends committed files to one Iceberg table per source
// table, through a SQL catalog (JDBC catalog layout). It writes the
// Iceberg metadata itself (iceberg_meta.go, iceberg_avro.go): an append
// only needs a manifest, a manifest list, a metadata file and a pointer
// swap in the catalog, and a full Iceberg library costs every Plume
// process tens of MB of memory (see docs/targets/lake.md).
//
// Invariants (why an Iceberg table holds every committed file exactly once):
//   - The lake's manifests are the source of truth; Iceberg follows them in
//     commit order. Appending commit N's files to table T is one Iceberg
//     commit whose snapshot summary records plume.commit-seq = N (and the
//     Kafka offsets after N), atomically with the files: they are in the
//     same metadata file, made current by one catalog swap.
//   - Before appending commit N to T, the newest snapshot of T that carries
//     plume.commit-seq is read: if it is >= N, T already has N's files and
//     they are skipped. So a crash or retry between the manifest and the
//     Iceberg commit, or between two tables of one commit, appends nothing
//     twice, and nothing is lost because Open and every Apply catch up
//     before returning.
//   - The check and the commit see the same table state: the swap moves
//     the catalog pointer only if it still points at the metadata file the
//     check read (compare-and-swap). If another writer (another Plume, a
//     compaction) committed in between, the swap fails, and the append is
//     redone from a fresh read, check included, on top of that commit, so
//     its files are kept and ours are neither lost nor doubled.
//   - _plume/iceberg.json records the highest commit applied to every
//     table (a hint, written after): catching up starts after it.
type icebergSink struct {
	cat       *sqlCatalog
	db        *sql.DB
	namespace string
	store     storage
	log       *slog.Logger
	done      int64 // every commit <= done is in Iceberg
	loaded    bool

	// Test hook: runs before the catalog swap of an append.
	hookBeforeSwap func(table string) error
}

// maxCommitAttempts bounds the retries of one table's append when other
// writers keep committing to it.
const maxCommitAttempts = 10

func newIcebergSink(ctx context.Context, s *settings, st storage, log *slog.Logger) (*icebergSink, error) {
	db, pg, err := openCatalogDB(s.iceberg.CatalogDSN.Reveal())
	if err != nil {
		return nil, target.Permanent(fmt.Errorf("iceberg.catalog_dsn: %v", err))
	}
	cat, err := newSQLCatalog(ctx, db, pg, s.iceberg.CatalogName)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("iceberg catalog: %w", err)
	}
	if err := cat.ensureNamespace(ctx, s.iceberg.Namespace); err != nil {
		db.Close()
		return nil, fmt.Errorf("iceberg catalog: create namespace %s: %w", s.iceberg.Namespace, err)
	}
	return &icebergSink{cat: cat, db: db, namespace: s.iceberg.Namespace, store: st, log: log}, nil
}

func (s *icebergSink) close() error { return s.db.Close() }

// tableName is the Iceberg table of a source table: <schema>_<table>, in
// the sink's namespace.
func tableIdent(tbl string) string { return strings.ReplaceAll(tbl, ".", "_") }

// catchUp appends commits (done, upTo] in order.
func (s *icebergSink) catchUp(ctx context.Context, upTo int64, read func(context.Context, string) (*manifest, error)) error {
	if !s.loaded {
		if b, err := s.store.Get(ctx, icebergKey); err == nil {
			var h struct {
				Seq int64 `json:"seq"`
			}
			if json.Unmarshal(b, &h) == nil && h.Seq <= upTo {
				s.done = h.Seq
			}
		} else if !errors.Is(err, errNotFound) {
			return err
		}
		s.loaded = true
	}
	for seq := s.done + 1; seq <= upTo; seq++ {
		m, err := read(ctx, commitKey(seq))
		if err != nil {
			return fmt.Errorf("iceberg catch-up: %w", err)
		}
		if err := s.appendCommit(ctx, m); err != nil {
			return fmt.Errorf("iceberg: append commit %d: %w", seq, err)
		}
		s.done = seq
		hb, _ := json.Marshal(map[string]int64{"seq": seq})
		if err := s.store.Put(ctx, icebergKey, hb); err != nil {
			s.log.Warn("write iceberg.json (a hint only)", "err", err)
		}
	}
	return nil
}

// appendCommit appends one manifest's files, table by table.
func (s *icebergSink) appendCommit(ctx context.Context, m *manifest) error {
	byTable := map[string][]fileRef{}
	var tables []string
	for _, f := range m.Files {
		if _, ok := byTable[f.Table]; !ok {
			tables = append(tables, f.Table)
		}
		byTable[f.Table] = append(byTable[f.Table], f)
	}
	offsets, _ := json.Marshal(m.Offsets)
	for _, name := range tables {
		cols, err := tableColumns(m.Tables[name])
		if err != nil {
			return err
		}
		for attempt := 1; ; attempt++ {
			err := s.appendTable(ctx, name, cols, byTable[name], m.Seq, string(offsets), attempt)
			if err == nil {
				break
			}
			if !errors.Is(err, errCommitConflict) || attempt >= maxCommitAttempts {
				return fmt.Errorf("table %s: %w", name, err)
			}
			s.log.Info("concurrent Iceberg commit; retrying the append", "table", name, "attempt", attempt)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(attempt) * 20 * time.Millisecond):
			}
		}
	}
	return nil
}

// tableKey is the storage key of a table's location.
func (s *icebergSink) tableKey(name string) string {
	return "_iceberg/" + s.namespace + "/" + tableIdent(name)
}

// keyOf maps a URI under the lake's root to its storage key.
func (s *icebergSink) keyOf(uri string) (string, error) {
	root := s.store.URI("")
	if !strings.HasSuffix(root, "/") {
		root += "/"
	}
	if !strings.HasPrefix(uri, root) {
		return "", target.Permanent(fmt.Errorf("Iceberg file %s is outside the lake %s: Plume reads and writes Iceberg metadata through the lake's storage only", uri, root))
	}
	return strings.TrimPrefix(uri, root), nil
}

// load reads a table's current metadata; nil if the catalog lacks it.
func (s *icebergSink) load(ctx context.Context, ident string) (*tableMetadata, string, error) {
	loc, err := s.cat.metadataLocation(ctx, s.namespace, ident)
	if err != nil || loc == "" {
		return nil, "", err
	}
	key, err := s.keyOf(loc)
	if err != nil {
		return nil, "", err
	}
	b, err := s.store.Get(ctx, key)
	if err != nil {
		return nil, "", fmt.Errorf("read %s: %w", loc, err)
	}
	md, err := parseTableMetadata(b)
	if err != nil {
		return nil, "", target.Permanent(fmt.Errorf("%s: %v", loc, err))
	}
	return md, loc, nil
}

// appendTable is one attempt to append files (commit seq) to a table:
// read, check, write new metadata files, swap. errCommitConflict means
// another writer moved the table; the caller retries from the read.
func (s *icebergSink) appendTable(ctx context.Context, name string, cols []column, files []fileRef, seq int64, offsets string, attempt int) error {
	ident := tableIdent(name)
	tkey := s.tableKey(name)
	md, cur, err := s.load(ctx, ident)
	if err != nil {
		return err
	}
	if md == nil {
		// Create the table: metadata version 0 without a snapshot, then
		// the catalog row (a concurrent create makes the insert fail:
		// conflict, and the retry loads that table).
		md, err = newTableMetadata(strings.TrimSuffix(s.store.URI(tkey), "/"), cols, time.Now().UnixMilli())
		if err != nil {
			return err
		}
		key := fmt.Sprintf("%s/metadata/%05d-%s.metadata.json", tkey, 0, newUUID())
		b, err := json.Marshal(md)
		if err != nil {
			return err
		}
		if err := s.store.PutIfAbsent(ctx, key, b); err != nil {
			return err
		}
		if err := s.cat.createTable(ctx, s.namespace, ident, s.store.URI(key)); err != nil {
			_ = s.store.Delete(ctx, key)
			return err
		}
		cur = s.store.URI(key)
	}
	// Exactly once (see icebergSink): skip a commit the table has. The
	// swap below only succeeds if the table is still at cur, the state
	// this check read.
	if last, ok := md.lastPlumeSeq(); ok && last >= seq {
		return nil
	}
	prevMs := md.LastUpdatedMs
	if _, err := md.evolve(cols); err != nil {
		return fmt.Errorf("evolve schema: %w", err)
	}
	now := time.Now().UnixMilli()
	if now <= prevMs {
		now = prevMs + 1
	}
	snapID := newSnapshotID()
	for md.snapshotByID(snapID) != nil {
		snapID = newSnapshotID()
	}
	seqNum := md.LastSequenceNumber + 1
	metaDir := tkey + "/metadata/"
	var written []string
	cleanup := func() {
		for _, k := range written {
			_ = s.store.Delete(ctx, k)
		}
	}

	// The manifest: one ADDED entry per file.
	var addedRows, addedBytes int64
	entries := make([]manifestEntry, len(files))
	for i, f := range files {
		entries[i] = manifestEntry{Status: 1, SnapshotID: &snapID, DataFile: dataFileRec{
			Content: 0, FilePath: s.store.URI(f.Path), FileFormat: "PARQUET",
			RecordCount: f.Rows, FileSizeInBytes: f.Bytes,
		}}
		addedRows += f.Rows
		addedBytes += f.Bytes
	}
	_, schemaJSON, err := md.currentFields()
	if err != nil {
		return err
	}
	mb, err := writeManifest(entries, map[string][]byte{
		"schema":            schemaJSON,
		"schema-id":         []byte(strconv.Itoa(md.CurrentSchemaID)),
		"partition-spec":    []byte("[]"),
		"partition-spec-id": []byte(strconv.Itoa(md.DefaultSpecID)),
		"format-version":    []byte("2"),
		"content":           []byte("data"),
	})
	if err != nil {
		return err
	}
	mkey := metaDir + newUUID() + "-m0.avro"
	if err := s.store.Put(ctx, mkey, mb); err != nil {
		return err
	}
	written = append(written, mkey)

	// The manifest list: the new manifest, then every manifest of the
	// parent snapshot.
	list := []manifestFile{{
		Path: s.store.URI(mkey), Length: int64(len(mb)), SpecID: int32(md.DefaultSpecID), Content: 0,
		SequenceNumber: seqNum, MinSequenceNumber: seqNum, AddedSnapshotID: snapID,
		AddedFilesCount: int32(len(files)), AddedRowsCount: addedRows, Partitions: &[]fieldSummary{},
	}}
	parent := md.currentSnapshot()
	var parentID *int64
	if parent != nil {
		parentID = &parent.SnapshotID
		lkey, err := s.keyOf(parent.ManifestList)
		if err != nil {
			cleanup()
			return err
		}
		lb, err := s.store.Get(ctx, lkey)
		if err != nil {
			cleanup()
			return fmt.Errorf("read manifest list %s: %w", parent.ManifestList, err)
		}
		pl, err := readManifestList(lb)
		if err != nil {
			cleanup()
			return target.Permanent(fmt.Errorf("%s: %v", parent.ManifestList, err))
		}
		list = append(list, pl...)
	}
	lb, err := writeManifestList(list, snapID, parentID, seqNum)
	if err != nil {
		cleanup()
		return err
	}
	lkey := fmt.Sprintf("%ssnap-%d-%d-%s.avro", metaDir, snapID, attempt, newUUID())
	if err := s.store.Put(ctx, lkey, lb); err != nil {
		cleanup()
		return err
	}
	written = append(written, lkey)

	// The snapshot and the new metadata file.
	summary := map[string]string{
		"operation":        "append",
		"added-data-files": strconv.Itoa(len(files)),
		"added-records":    strconv.FormatInt(addedRows, 10),
		"added-files-size": strconv.FormatInt(addedBytes, 10),
		summarySeq:         strconv.FormatInt(seq, 10),
		summaryOffsets:     offsets,
	}
	totals(summary, parent, list, len(files), addedRows, addedBytes)
	schemaID := md.CurrentSchemaID
	md.addSnapshot(snapshot{SnapshotID: snapID, ParentSnapshotID: parentID, SequenceNumber: seqNum, TimestampMs: now,
		ManifestList: s.store.URI(lkey), Summary: summary, SchemaID: &schemaID}, cur, prevMs)
	nb, err := json.Marshal(md)
	if err != nil {
		cleanup()
		return err
	}
	ver := metadataVersion(cur) + 1
	if ver <= 0 {
		ver = len(md.MetadataLog)
	}
	nkey := fmt.Sprintf("%s%05d-%s.metadata.json", metaDir, ver, newUUID())
	if err := s.store.PutIfAbsent(ctx, nkey, nb); err != nil {
		cleanup()
		return err
	}
	written = append(written, nkey)
	if s.hookBeforeSwap != nil {
		if err := s.hookBeforeSwap(name); err != nil {
			cleanup()
			return err
		}
	}
	// The commit point.
	if err := s.cat.swap(ctx, s.namespace, ident, cur, s.store.URI(nkey)); err != nil {
		if errors.Is(err, errCommitConflict) {
			cleanup() // nobody references these files
		}
		// Another error (the catalog unreachable) may hide a swap that
		// happened: the files stay, and the retry's check decides.
		return err
	}
	return nil
}

// totals sets the snapshot summary's total-* counters: the parent's plus
// what this snapshot adds, or, if the parent has none, counted from the
// manifest list.
func totals(summary map[string]string, parent *snapshot, list []manifestFile, files int, rows, size int64) {
	get := func(k string) (int64, bool) {
		if parent == nil {
			return 0, true
		}
		n, err := strconv.ParseInt(parent.Summary[k], 10, 64)
		return n, err == nil
	}
	tf, ok1 := get("total-data-files")
	tr, ok2 := get("total-records")
	if ok1 && ok2 {
		summary["total-data-files"] = strconv.FormatInt(tf+int64(files), 10)
		summary["total-records"] = strconv.FormatInt(tr+rows, 10)
	} else {
		var f, r int64
		for _, m := range list {
			if m.Content == 0 {
				f += int64(m.AddedFilesCount) + int64(m.ExistingFilesCount)
				r += m.AddedRowsCount + m.ExistingRowsCount
			}
		}
		summary["total-data-files"] = strconv.FormatInt(f, 10)
		summary["total-records"] = strconv.FormatInt(r, 10)
	}
	if ts, ok := get("total-files-size"); ok {
		summary["total-files-size"] = strconv.FormatInt(ts+size, 10)
	}
	for _, k := range []string{"total-delete-files", "total-position-deletes", "total-equality-deletes"} {
		if n, ok := get(k); ok {
			summary[k] = strconv.FormatInt(n, 10)
		}
	}
}
