package lake

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/iceberg-go"
	"github.com/apache/iceberg-go/catalog"
	sqlcat "github.com/apache/iceberg-go/catalog/sql"
	iceio "github.com/apache/iceberg-go/io"
	_ "github.com/apache/iceberg-go/io/gocloud/s3" // s3:// table locations
	"github.com/apache/iceberg-go/table"
	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/plumecdc/plume/pkg/target"
)

// Snapshot summary properties Plume writes on every append.
const (
	summarySeq     = "plume.commit-seq" // the lake commit (manifest) the files came from
	summaryOffsets = "plume.offsets"    // JSON topic -> partition -> next offset after that commit
)

// icebergSink appends committed files to one Iceberg table per source
// table, through a SQL catalog.
//
// Invariants (why an Iceberg table holds every committed file exactly once):
//   - The lake's manifests are the source of truth; Iceberg follows them in
//     commit order. Appending commit N's files to table T is one Iceberg
//     commit whose snapshot summary records plume.commit-seq = N (and the
//     Kafka offsets after N), atomically with the files.
//   - Before appending commit N to T, the newest snapshot of T that carries
//     plume.commit-seq is read: if it is >= N, T already has N's files and
//     they are skipped. So a crash or retry between the manifest and the
//     Iceberg commit, or between two tables of one commit, appends nothing
//     twice, and nothing is lost because Open and every Apply catch up
//     before returning.
//   - _plume/iceberg.json records the highest commit applied to every
//     table (a hint, written after): catching up starts after it.
type icebergSink struct {
	cat       *sqlcat.Catalog
	db        *sql.DB
	namespace string
	store     storage
	log       *slog.Logger
	done      int64 // every commit <= done is in Iceberg
	loaded    bool
}

func catalogDriver(dsn string) (driver string, dialect sqlcat.SupportedDialect, err error) {
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		return "pgx", sqlcat.Postgres, nil
	case strings.HasPrefix(dsn, "mysql://"), strings.HasPrefix(dsn, "mariadb://"):
		return "mysql", sqlcat.MySQL, nil
	}
	return "", "", errors.New("want postgres://... or mysql://...")
}

func openCatalogDB(dsn string) (*sql.DB, sqlcat.SupportedDialect, error) {
	drv, dialect, err := catalogDriver(dsn)
	if err != nil {
		return nil, "", err
	}
	if drv == "pgx" {
		pc, err := pgxConfig(dsn)
		if err != nil {
			return nil, "", errors.New("bad postgres:// catalog DSN")
		}
		return stdlib.OpenDB(*pc), dialect, nil
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return nil, "", errors.New("bad mysql:// catalog DSN")
	}
	cfg := mysql.NewConfig()
	cfg.User = u.User.Username()
	cfg.Passwd, _ = u.User.Password()
	cfg.Net, cfg.Addr = "tcp", u.Host
	cfg.DBName = strings.TrimPrefix(u.Path, "/")
	cfg.ParseTime = true
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, "", err
	}
	return sql.OpenDB(conn), dialect, nil
}

func newIcebergSink(ctx context.Context, s *settings, st storage, log *slog.Logger) (*icebergSink, error) {
	db, dialect, err := openCatalogDB(s.iceberg.CatalogDSN.Reveal())
	if err != nil {
		return nil, target.Permanent(fmt.Errorf("iceberg.catalog_dsn: %v", err))
	}
	props := iceberg.Properties{}
	if s.bucket != "" {
		props[iceio.S3Region] = s.s3.Region
		if s.s3.Endpoint != "" {
			props[iceio.S3EndpointURL] = s.s3.Endpoint
		}
		props[iceio.S3ForceVirtualAddressing] = strconv.FormatBool(!s.pathStyle)
		if s.s3.AccessKeyID != "" {
			props[iceio.S3AccessKeyID] = s.s3.AccessKeyID
			props[iceio.S3SecretAccessKey] = s.s3.SecretAccessKey.Reveal()
			if s.s3.SessionToken.IsSet() {
				props[iceio.S3SessionToken] = s.s3.SessionToken.Reveal()
			}
		}
	}
	cat, err := sqlcat.NewCatalog(s.iceberg.CatalogName, db, dialect, props)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("iceberg catalog: %w", err)
	}
	ns := table.Identifier{s.iceberg.Namespace}
	if ok, err := cat.CheckNamespaceExists(ctx, ns); err != nil {
		db.Close()
		return nil, fmt.Errorf("iceberg catalog: %w", err)
	} else if !ok {
		if err := cat.CreateNamespace(ctx, ns, nil); err != nil && !errors.Is(err, catalog.ErrNamespaceAlreadyExists) {
			db.Close()
			return nil, fmt.Errorf("iceberg catalog: create namespace %s: %w", s.iceberg.Namespace, err)
		}
	}
	return &icebergSink{cat: cat, db: db, namespace: s.iceberg.Namespace, store: st, log: log}, nil
}

func (s *icebergSink) close() error {
	s.cat.Close()
	return s.db.Close()
}

// ident is the Iceberg table of a source table: <namespace>.<schema>_<table>.
func (s *icebergSink) ident(tbl string) table.Identifier {
	return table.Identifier{s.namespace, strings.ReplaceAll(tbl, ".", "_")}
}

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
		cols := m.Tables[name]
		sc, err := icebergSchema(cols)
		if err != nil {
			return err
		}
		tbl, err := s.loadOrCreate(ctx, name, sc)
		if err != nil {
			return err
		}
		if last, ok := lastPlumeSeq(tbl); ok && last >= m.Seq {
			continue // this table already has commit m.Seq
		}
		tx := tbl.NewTransaction()
		// Schema evolution: add the columns the table lacks (a column
		// added at the source). Files written before keep fewer columns;
		// readers see null there.
		cur := tbl.Schema()
		var added bool
		up := tx.UpdateSchema(true, false)
		for _, f := range sc.Fields() {
			if _, ok := cur.FindFieldByName(f.Name); !ok {
				up = up.AddColumn([]string{f.Name}, f.Type, "", false, nil)
				added = true
			}
		}
		if added {
			if err := up.Commit(); err != nil {
				return fmt.Errorf("evolve schema of %s: %w", name, err)
			}
			staged, err := tx.StagedTable()
			if err != nil {
				return err
			}
			nm, err := json.Marshal(staged.Schema().NameMapping())
			if err != nil {
				return err
			}
			if err := tx.SetProperties(iceberg.Properties{table.DefaultNameMappingKey: string(nm)}); err != nil {
				return err
			}
		}
		paths := make([]string, len(byTable[name]))
		for i, f := range byTable[name] {
			paths[i] = s.store.URI(f.Path)
		}
		props := iceberg.Properties{summarySeq: strconv.FormatInt(m.Seq, 10), summaryOffsets: string(offsets)}
		// ignoreDuplicates: the commit-seq check above is the duplicate
		// check, without scanning every manifest of the table.
		if err := tx.AddFiles(ctx, paths, props, true); err != nil {
			return fmt.Errorf("add files to %s: %w", name, err)
		}
		if _, err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("commit %s: %w", name, err)
		}
	}
	return nil
}

// lastPlumeSeq walks back from the current snapshot to the newest one
// Plume wrote (another writer, such as a compaction, may have committed
// after it) and returns its commit-seq.
func lastPlumeSeq(tbl *table.Table) (int64, bool) {
	snap := tbl.CurrentSnapshot()
	for snap != nil {
		if snap.Summary != nil {
			if v, ok := snap.Summary.Properties[summarySeq]; ok {
				n, err := strconv.ParseInt(v, 10, 64)
				return n, err == nil
			}
		}
		if snap.ParentSnapshotID == nil {
			break
		}
		snap = tbl.SnapshotByID(*snap.ParentSnapshotID)
	}
	return 0, false
}

func (s *icebergSink) loadOrCreate(ctx context.Context, name string, sc *iceberg.Schema) (*table.Table, error) {
	id := s.ident(name)
	tbl, err := s.cat.LoadTable(ctx, id)
	if err == nil {
		return tbl, nil
	}
	if !errors.Is(err, catalog.ErrNoSuchTable) {
		return nil, err
	}
	loc := strings.TrimSuffix(s.store.URI("_iceberg/"+s.namespace+"/"+id[1]), "/")
	tbl, err = s.cat.CreateTable(ctx, id, sc, catalog.WithLocation(loc))
	if errors.Is(err, catalog.ErrTableAlreadyExists) {
		return s.cat.LoadTable(ctx, id)
	}
	return tbl, err
}

// icebergSchema is the table schema of a manifest's column list, metadata
// columns first, as in the files.
func icebergSchema(cols []column) (*iceberg.Schema, error) {
	fields := make([]arrow.Field, 0, len(metaColumns)+len(cols))
	for _, mc := range metaColumns {
		fields = append(fields, arrow.Field{Name: mc.name, Type: mc.typ.arrowType(), Nullable: true})
	}
	for _, c := range cols {
		ct, err := parseColType(c.Type)
		if err != nil {
			return nil, err
		}
		fields = append(fields, arrow.Field{Name: c.Name, Type: ct.arrowType(), Nullable: true})
	}
	return table.ArrowSchemaToIcebergWithFreshIDs(arrow.NewSchema(fields, nil), false)
}
