package lake

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"

	"github.com/twmb/avro"
	"github.com/twmb/avro/ocf"
)

// The Avro files of an Iceberg snapshot (table spec, format version 2):
// a manifest lists data files (manifest_entry records), a manifest list
// lists manifests (manifest_file records). The schemas carry the spec's
// field-id attributes; readers resolve fields by them. The schemas and
// record names are those of the Java and iceberg-go writers.

// manifestFileSchema is the v2 manifest_file record (manifest list).
const manifestFileSchema = `{"type":"record","name":"manifest_file","fields":[
{"name":"manifest_path","type":"string","doc":"Location URI with FS scheme","field-id":500},
{"name":"manifest_length","type":"long","doc":"Total file size in bytes","field-id":501},
{"name":"partition_spec_id","type":"int","doc":"Spec ID used to write","field-id":502},
{"name":"content","type":"int","doc":"Contents of the manifest: 0=data, 1=deletes","default":0,"field-id":517},
{"name":"sequence_number","type":"long","doc":"Sequence number when the manifest was added","default":0,"field-id":515},
{"name":"min_sequence_number","type":"long","doc":"Lowest sequence number in the manifest","default":0,"field-id":516},
{"name":"added_snapshot_id","type":"long","doc":"Snapshot ID that added the manifest","field-id":503},
{"name":"added_files_count","type":"int","doc":"Added entry count","field-id":504},
{"name":"existing_files_count","type":"int","doc":"Existing entry count","field-id":505},
{"name":"deleted_files_count","type":"int","doc":"Deleted entry count","field-id":506},
{"name":"partitions","type":["null",{"type":"array","items":{"type":"record","name":"r508","fields":[
 {"name":"contains_null","type":"boolean","doc":"True if any file has a null partition value","field-id":509},
 {"name":"contains_nan","type":["null","boolean"],"doc":"True if any file has a nan partition value","default":null,"field-id":518},
 {"name":"lower_bound","type":["null","bytes"],"doc":"Partition lower bound for all files","default":null,"field-id":510},
 {"name":"upper_bound","type":["null","bytes"],"doc":"Partition upper bound for all files","default":null,"field-id":511}]},
 "element-id":508}],"doc":"Summary for each partition","default":null,"field-id":507},
{"name":"added_rows_count","type":"long","doc":"Added rows count","field-id":512},
{"name":"existing_rows_count","type":"long","doc":"Existing rows count","field-id":513},
{"name":"deleted_rows_count","type":"long","doc":"Deleted rows count","field-id":514},
{"name":"key_metadata","type":["null","bytes"],"doc":"Key metadata","default":null,"field-id":519}]}`

// manifestEntrySchema is the v2 manifest_entry record of an unpartitioned
// table (the partition tuple is an empty struct, field 102).
const manifestEntrySchema = `{"type":"record","name":"manifest_entry","fields":[
{"name":"status","type":"int","field-id":0},
{"name":"snapshot_id","type":["null","long"],"default":null,"field-id":1},
{"name":"sequence_number","type":["null","long"],"default":null,"field-id":3},
{"name":"file_sequence_number","type":["null","long"],"default":null,"field-id":4},
{"name":"data_file","type":{"type":"record","name":"r2","fields":[
 {"name":"content","type":"int","doc":"Contents of the file: 0=data, 1=position deletes, 2=equality deletes","default":0,"field-id":134},
 {"name":"file_path","type":"string","doc":"Location URI with FS scheme","field-id":100},
 {"name":"file_format","type":"string","doc":"File format name: avro, orc, or parquet","field-id":101},
 {"name":"partition","type":{"type":"record","name":"r102","fields":[]},"doc":"Partition data tuple, schema based on the partition spec","field-id":102},
 {"name":"record_count","type":"long","doc":"Number of records in the file","field-id":103},
 {"name":"file_size_in_bytes","type":"long","doc":"Total file size in bytes","field-id":104},
 {"name":"column_sizes","type":["null",{"type":"array","items":{"type":"record","name":"k117_v118","fields":[{"name":"key","type":"int","field-id":117},{"name":"value","type":"long","field-id":118}]},"logicalType":"map"}],"doc":"Map of column id to total size on disk","default":null,"field-id":108},
 {"name":"value_counts","type":["null",{"type":"array","items":{"type":"record","name":"k119_v120","fields":[{"name":"key","type":"int","field-id":119},{"name":"value","type":"long","field-id":120}]},"logicalType":"map"}],"doc":"Map of column id to total count, including null and NaN","default":null,"field-id":109},
 {"name":"null_value_counts","type":["null",{"type":"array","items":{"type":"record","name":"k121_v122","fields":[{"name":"key","type":"int","field-id":121},{"name":"value","type":"long","field-id":122}]},"logicalType":"map"}],"doc":"Map of column id to null value count","default":null,"field-id":110},
 {"name":"nan_value_counts","type":["null",{"type":"array","items":{"type":"record","name":"k138_v139","fields":[{"name":"key","type":"int","field-id":138},{"name":"value","type":"long","field-id":139}]},"logicalType":"map"}],"doc":"Map of column id to number of NaN values in the column","default":null,"field-id":137},
 {"name":"lower_bounds","type":["null",{"type":"array","items":{"type":"record","name":"k126_v127","fields":[{"name":"key","type":"int","field-id":126},{"name":"value","type":"bytes","field-id":127}]},"logicalType":"map"}],"doc":"Map of column id to lower bound","default":null,"field-id":125},
 {"name":"upper_bounds","type":["null",{"type":"array","items":{"type":"record","name":"k129_v130","fields":[{"name":"key","type":"int","field-id":129},{"name":"value","type":"bytes","field-id":130}]},"logicalType":"map"}],"doc":"Map of column id to upper bound","default":null,"field-id":128},
 {"name":"key_metadata","type":["null","bytes"],"doc":"Encryption key metadata blob","default":null,"field-id":131},
 {"name":"split_offsets","type":["null",{"type":"array","items":"long","element-id":133}],"doc":"Splittable offsets","default":null,"field-id":132},
 {"name":"equality_ids","type":["null",{"type":"array","items":"int","element-id":136}],"doc":"Equality comparison field IDs","default":null,"field-id":135},
 {"name":"sort_order_id","type":["null","int"],"doc":"Sort order ID","default":null,"field-id":140}]},
 "field-id":2}]}`

// The parsed schemas, on first use: parsing them costs about 200 KB of
// heap and start-up work that a pipeline without Iceberg should not pay.
var (
	manifestFileAvro  = sync.OnceValue(func() *avro.Schema { return avro.MustParse(manifestFileSchema) })
	manifestEntryAvro = sync.OnceValue(func() *avro.Schema { return avro.MustParse(manifestEntrySchema) })
)

// manifestFile is one manifest_file record of a manifest list. Entries
// of a parent snapshot's list are carried over as read.
type manifestFile struct {
	Path               string          `avro:"manifest_path"`
	Length             int64           `avro:"manifest_length"`
	SpecID             int32           `avro:"partition_spec_id"`
	Content            int32           `avro:"content"`
	SequenceNumber     int64           `avro:"sequence_number"`
	MinSequenceNumber  int64           `avro:"min_sequence_number"`
	AddedSnapshotID    int64           `avro:"added_snapshot_id"`
	AddedFilesCount    int32           `avro:"added_files_count"`
	ExistingFilesCount int32           `avro:"existing_files_count"`
	DeletedFilesCount  int32           `avro:"deleted_files_count"`
	Partitions         *[]fieldSummary `avro:"partitions"`
	AddedRowsCount     int64           `avro:"added_rows_count"`
	ExistingRowsCount  int64           `avro:"existing_rows_count"`
	DeletedRowsCount   int64           `avro:"deleted_rows_count"`
	KeyMetadata        *[]byte         `avro:"key_metadata"`
}

type fieldSummary struct {
	ContainsNull bool    `avro:"contains_null"`
	ContainsNaN  *bool   `avro:"contains_nan"`
	LowerBound   *[]byte `avro:"lower_bound"`
	UpperBound   *[]byte `avro:"upper_bound"`
}

// manifestEntry is an ADDED data file of an unpartitioned table; the
// sequence numbers are null, so readers inherit the manifest's (the
// snapshot's) sequence number, as the spec prescribes for new files.
type manifestEntry struct {
	Status             int32       `avro:"status"` // 1 = ADDED
	SnapshotID         *int64      `avro:"snapshot_id"`
	SequenceNumber     *int64      `avro:"sequence_number"`
	FileSequenceNumber *int64      `avro:"file_sequence_number"`
	DataFile           dataFileRec `avro:"data_file"`
}

type dataFileRec struct {
	Content         int32      `avro:"content"` // 0 = data
	FilePath        string     `avro:"file_path"`
	FileFormat      string     `avro:"file_format"`
	Partition       struct{}   `avro:"partition"`
	RecordCount     int64      `avro:"record_count"`
	FileSizeInBytes int64      `avro:"file_size_in_bytes"`
	ColumnSizes     *[]kvLong  `avro:"column_sizes"`
	ValueCounts     *[]kvLong  `avro:"value_counts"`
	NullValueCounts *[]kvLong  `avro:"null_value_counts"`
	NaNValueCounts  *[]kvLong  `avro:"nan_value_counts"`
	LowerBounds     *[]kvBytes `avro:"lower_bounds"`
	UpperBounds     *[]kvBytes `avro:"upper_bounds"`
	KeyMetadata     *[]byte    `avro:"key_metadata"`
	SplitOffsets    *[]int64   `avro:"split_offsets"`
	EqualityIDs     *[]int32   `avro:"equality_ids"`
	SortOrderID     *int32     `avro:"sort_order_id"`
}

type kvLong struct {
	Key   int32 `avro:"key"`
	Value int64 `avro:"value"`
}

type kvBytes struct {
	Key   int32  `avro:"key"`
	Value []byte `avro:"value"`
}

// writeManifest encodes a manifest of ADDED data files. meta is the
// file's key-value metadata the spec requires (schema, schema-id,
// partition-spec, partition-spec-id, format-version, content).
func writeManifest(entries []manifestEntry, meta map[string][]byte) ([]byte, error) {
	var buf bytes.Buffer
	w, err := ocf.NewWriter(&buf, manifestEntryAvro(), ocf.WithSchema(manifestEntrySchema),
		ocf.WithMetadata(meta), ocf.WithCodec(ocf.DeflateCodec(-1)))
	if err != nil {
		return nil, err
	}
	for i := range entries {
		if err := w.Encode(&entries[i]); err != nil {
			return nil, fmt.Errorf("encode manifest entry: %w", err)
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeManifestList encodes a v2 manifest list.
func writeManifestList(files []manifestFile, snapshotID int64, parent *int64, seq int64) ([]byte, error) {
	parentStr := "null"
	if parent != nil {
		parentStr = strconv.FormatInt(*parent, 10)
	}
	meta := map[string][]byte{
		"format-version":     []byte("2"),
		"snapshot-id":        []byte(strconv.FormatInt(snapshotID, 10)),
		"parent-snapshot-id": []byte(parentStr),
		"sequence-number":    []byte(strconv.FormatInt(seq, 10)),
	}
	var buf bytes.Buffer
	w, err := ocf.NewWriter(&buf, manifestFileAvro(), ocf.WithSchema(manifestFileSchema),
		ocf.WithMetadata(meta), ocf.WithCodec(ocf.DeflateCodec(-1)))
	if err != nil {
		return nil, err
	}
	for i := range files {
		if err := w.Encode(&files[i]); err != nil {
			return nil, fmt.Errorf("encode manifest list entry: %w", err)
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// readManifestList decodes a manifest list with the v2 schema as the
// reader schema (fields resolved by name; a v1 list's missing sequence
// numbers read as 0, as the spec's inheritance rules say).
func readManifestList(b []byte) ([]manifestFile, error) {
	rd, err := ocf.NewReader(bytes.NewReader(b), ocf.WithReaderSchema(manifestFileAvro()))
	if err != nil {
		return nil, fmt.Errorf("read manifest list: %w", err)
	}
	defer rd.Close()
	var out []manifestFile
	for {
		var mf manifestFile
		err := rd.Decode(&mf)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("read manifest list: %w", err)
		}
		out = append(out, mf)
	}
}
