package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/connectors/lake"
	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

// The lake workload: rows per second and MB/s of Parquet written by the
// lake target (a topic pre-filled with insert events -> router -> lake
// target -> zstd Parquet + commit manifests), to a local directory and to
// S3 (versitygw on this machine), next to a bare arrow-go (pqarrow) writer
// of the same rows in files of the same size to the same storage (the
// limit: encoding and storing, nothing else).
func init() { registerTargetBench("lake", (*bench).lakeTarget) }

// lakeBatch is both Plume's batch (the lake type's default
// delivery.batch_max_events) and the bare writer's rows per file.
const lakeBatch = lake.DefaultBatchMaxEvents

func (b *bench) lakeTarget(t *tb) []*TargetResult {
	ctx := context.Background()
	n := int64(b.s.E2ERows)
	name := uniq(t, "l")
	topic := name + ".public.products"
	must(t, b.adm.createTopic(ctx, topic))
	prod, err := kgo.NewClient(kgo.SeedBrokers(b.brokers...), kgo.ProducerLinger(5*time.Millisecond), kgo.MaxBufferedRecords(20000))
	must(t, err)
	enc := &event.Encoder{Pipeline: name}
	commit := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	for i := int64(1); i <= n; i++ {
		c := &event.Change{Op: event.OpCreate, Table: searchTable, After: searchRow(i), Commit: commit, TxID: "1", Pos: "lsn:0/1", Index: i}
		prod.Produce(ctx, enc.Record(topic, c), func(_ *kgo.Record, err error) {
			if err != nil {
				logf("lake: produce: %v", err)
			}
		})
	}
	must(t, prod.Flush(ctx))
	prod.Close()

	srv := testharness.S3(t)
	var out []*TargetResult
	for _, where := range []string{"local", "s3"} {
		dir := t.TempDir()
		path := filepath.Join(dir, "lake")
		s3cfg := ""
		bucket := ""
		if where == "s3" {
			bucket = srv.Bucket(t)
			path = "s3://" + bucket + "/lake"
			s3cfg = fmt.Sprintf("    s3: { endpoint: %q, access_key_id: %q, secret_access_key: %q }\n", srv.Endpoint, srv.AccessKey, srv.SecretKey)
		}
		r := &TargetResult{Workload: "lake-" + where, Target: "lake", Rows: n,
			LimitName: fmt.Sprintf("bare pqarrow writer (zstd, %d rows/file, sequential)", lakeBatch),
			Notes: fmt.Sprintf("insert events of a 10-column row; types: infer; zstd; batches of %d events (1 s linger); storage: %s; rows/s from the first commit to the last", lakeBatch,
				map[string]string{"local": "local disk", "s3": "versitygw " + testharness.VersitygwVersion + " (posix backend) on this machine"}[where])}
		cfgFile := filepath.Join(dir, "lake.yaml")
		y := fmt.Sprintf(`name: %s-%s
state_dir: %s
log: { level: warn }
source:
  type: postgres
  dsn: "postgres://bench@127.0.0.1:1/unused"
  tables: ["public.products"]
kafka:
  brokers: [%q]
  topic_prefix: %s
routes:
  - name: all
    to: [lake]
targets:
  lake:
    type: lake
    path: %q
    types: infer
%s    delivery: { batch_max_events: %d, batch_linger: 1s }
`, name, where, filepath.Join(dir, "state"), b.brokers[0], name, path, s3cfg, lakeBatch)
		must(t, os.WriteFile(cfgFile, []byte(y), 0o600))
		cfg, err := config.Load(cfgFile)
		must(t, err)
		logf("lake: plume route stage -> %s, %d rows", where, n)
		group := "plume." + cfg.Name + ".lake"
		c := b.profiledChild(t, cfg, "route", "target-lake-"+where)
		var st procStat
		var firstAt time.Time
		var firstOff int64
		var secs float64
		for deadline := time.Now().Add(b.s.DrainTimeout); ; time.Sleep(20 * time.Millisecond) {
			st = c.stat()
			var at int64
			if offs, err := b.adm.adm.FetchOffsets(ctx, group); err == nil {
				if o, ok := offs.Lookup(topic, 0); ok && o.Err == nil {
					at = o.At
				}
			}
			if at > 0 && firstAt.IsZero() {
				firstAt, firstOff = time.Now(), at
			}
			if at >= n {
				secs = time.Since(firstAt).Seconds()
				break
			}
			if err := c.exited(); err != nil {
				t.Fatalf("lake: %v", err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("lake: route stage at offset %d of %d after %v:\n%s", at, n, b.s.DrainTimeout, tailLines(c.p.Output(), 20))
			}
		}
		total := time.Since(c.start).Seconds()
		_ = c.stop()
		var parquetBytes int64
		if where == "local" {
			filepath.Walk(path, func(p string, fi os.FileInfo, err error) error {
				if err == nil && !fi.IsDir() && filepath.Ext(p) == ".parquet" {
					parquetBytes += fi.Size()
				}
				return nil
			})
		} else {
			filepath.Walk(filepath.Join(srv.Data, bucket), func(p string, fi os.FileInfo, err error) error {
				if err == nil && !fi.IsDir() && filepath.Ext(p) == ".parquet" {
					parquetBytes += fi.Size()
				}
				return nil
			})
		}
		if secs <= 0 || n-firstOff < n/2 {
			secs, firstOff = total, 0
		}
		r.Seconds = secs
		r.RowsSec = float64(n-firstOff) / secs
		r.MBSec = float64(parquetBytes) / float64(n) * r.RowsSec / 1e6
		r.CPUUsPerRow = float64(st.CPU.Microseconds()) / float64(n)
		r.PeakRSSMB = float64(st.PeakKB) / 1024

		// The limit: the same rows, encoded by pqarrow and stored the same way.
		logf("lake: bare pqarrow writer -> %s, %d rows", where, n)
		var put func(key string, data []byte) error
		if where == "local" {
			bareDir := filepath.Join(dir, "bare")
			must(t, os.MkdirAll(bareDir, 0o755))
			put = func(key string, data []byte) error { return os.WriteFile(filepath.Join(bareDir, key), data, 0o644) }
		} else {
			cl := s3.New(s3.Options{Region: srv.Region, BaseEndpoint: aws.String(srv.Endpoint), UsePathStyle: true,
				Credentials:                credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, ""),
				RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired})
			put = func(key string, data []byte) error {
				_, err := cl.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("bare/" + key), Body: bytes.NewReader(data)})
				return err
			}
		}
		start := time.Now()
		var bareBytes int64
		for i := int64(1); i <= n; i += lakeBatch {
			data, err := lakeBareFile(i, min(i+lakeBatch, n+1))
			must(t, err)
			bareBytes += int64(len(data))
			must(t, put("part-"+strconv.FormatInt(i, 10)+".parquet", data))
		}
		bareSecs := time.Since(start).Seconds()
		r.LimitRowsSec = float64(n) / bareSecs
		r.Extra = map[string]float64{"parquet_bytes_per_row": float64(parquetBytes) / float64(n), "bare_bytes_per_row": float64(bareBytes) / float64(n),
			"bare_mb_per_sec": float64(bareBytes) / bareSecs / 1e6, "bare_seconds": bareSecs, "startup_seconds": total - secs,
			"rows_per_sec_incl_startup": float64(n) / total}
		out = append(out, r)
	}
	return out
}

// lakeBareFile encodes rows [from, to) of searchRow with the columns the
// lake target writes for them with types: infer (metadata columns
// included), as one zstd Parquet file.
func lakeBareFile(from, to int64) ([]byte, error) {
	ts := &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}
	str := arrow.BinaryTypes.String
	fields := []arrow.Field{
		{Name: "_op", Type: str, Nullable: true}, {Name: "_commit_time", Type: ts, Nullable: true},
		{Name: "_position", Type: str, Nullable: true}, {Name: "_txid", Type: str, Nullable: true},
		{Name: "_event_id", Type: str, Nullable: true}, {Name: "_topic", Type: str, Nullable: true},
		{Name: "_partition", Type: arrow.PrimitiveTypes.Int32, Nullable: true}, {Name: "_offset", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
		{Name: "id", Type: arrow.PrimitiveTypes.Int64, Nullable: true}, {Name: "sku", Type: str, Nullable: true},
		{Name: "name", Type: str, Nullable: true}, {Name: "price", Type: str, Nullable: true},
		{Name: "qty", Type: arrow.PrimitiveTypes.Int64, Nullable: true}, {Name: "category", Type: str, Nullable: true},
		{Name: "active", Type: arrow.FixedWidthTypes.Boolean, Nullable: true}, {Name: "weight", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
		{Name: "updated_at", Type: str, Nullable: true}, {Name: "description", Type: str, Nullable: true},
	}
	sc := arrow.NewSchema(fields, nil)
	rb := array.NewRecordBuilder(memory.DefaultAllocator, sc)
	defer rb.Release()
	commit := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC).UnixMicro()
	for i := from; i < to; i++ {
		row := searchRow(i)
		rb.Field(0).(*array.StringBuilder).Append("c")
		rb.Field(1).(*array.TimestampBuilder).Append(arrow.Timestamp(commit))
		rb.Field(2).(*array.StringBuilder).Append("lsn:0/1")
		rb.Field(3).(*array.StringBuilder).Append("1")
		rb.Field(4).(*array.StringBuilder).Append("lsn:0/1/" + strconv.FormatInt(i, 10))
		rb.Field(5).(*array.StringBuilder).Append("t.public.products")
		rb.Field(6).(*array.Int32Builder).Append(0)
		rb.Field(7).(*array.Int64Builder).Append(i - 1)
		rb.Field(8).(*array.Int64Builder).Append(row[0].(int64))
		rb.Field(9).(*array.StringBuilder).Append(row[1].(string))
		rb.Field(10).(*array.StringBuilder).Append(row[2].(string))
		rb.Field(11).(*array.StringBuilder).Append(string(row[3].(event.Decimal)))
		rb.Field(12).(*array.Int64Builder).Append(row[4].(int64))
		rb.Field(13).(*array.StringBuilder).Append(row[5].(string))
		rb.Field(14).(*array.BooleanBuilder).Append(row[6].(bool))
		rb.Field(15).(*array.Float64Builder).Append(row[7].(float64))
		rb.Field(16).(*array.StringBuilder).Append(row[8].(string))
		rb.Field(17).(*array.StringBuilder).Append(row[9].(string))
	}
	rec := rb.NewRecordBatch()
	defer rec.Release()
	var buf bytes.Buffer
	props := parquet.NewWriterProperties(parquet.WithCompression(compress.Codecs.Zstd), parquet.WithMaxRowGroupLength(128*1024), parquet.WithStats(true))
	w, err := pqarrow.NewFileWriter(sc, &buf, props, pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema()))
	if err != nil {
		return nil, err
	}
	if err := w.Write(rec); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
