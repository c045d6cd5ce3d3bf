package lake

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// tableMetadata is an Iceberg table metadata file, format version 2
// (https://iceberg.apache.org/spec/#table-metadata-fields). Plume only
// appends: it adds snapshots, schemas and properties. What it does not
// change is kept as read (raw JSON), and keys it does not know are
// carried over, so a commit does not drop what another writer put there.
type tableMetadata struct {
	FormatVersion      int                        `json:"format-version"`
	TableUUID          string                     `json:"table-uuid"`
	Location           string                     `json:"location"`
	LastSequenceNumber int64                      `json:"last-sequence-number"`
	LastUpdatedMs      int64                      `json:"last-updated-ms"`
	LastColumnID       int                        `json:"last-column-id"`
	Schemas            []json.RawMessage          `json:"schemas"`
	CurrentSchemaID    int                        `json:"current-schema-id"`
	PartitionSpecs     json.RawMessage            `json:"partition-specs"`
	DefaultSpecID      int                        `json:"default-spec-id"`
	LastPartitionID    int                        `json:"last-partition-id"`
	Properties         map[string]string          `json:"properties,omitempty"`
	CurrentSnapshotID  *int64                     `json:"current-snapshot-id,omitempty"`
	Snapshots          []snapshot                 `json:"snapshots,omitempty"`
	SnapshotLog        []snapshotLogEntry         `json:"snapshot-log,omitempty"`
	MetadataLog        []metadataLogEntry         `json:"metadata-log,omitempty"`
	SortOrders         json.RawMessage            `json:"sort-orders"`
	DefaultSortOrderID int                        `json:"default-sort-order-id"`
	Refs               map[string]json.RawMessage `json:"refs,omitempty"`

	extra map[string]json.RawMessage // keys not above
}

type snapshot struct {
	SnapshotID       int64             `json:"snapshot-id"`
	ParentSnapshotID *int64            `json:"parent-snapshot-id,omitempty"`
	SequenceNumber   int64             `json:"sequence-number"`
	TimestampMs      int64             `json:"timestamp-ms"`
	ManifestList     string            `json:"manifest-list,omitempty"`
	Summary          map[string]string `json:"summary"`
	SchemaID         *int              `json:"schema-id,omitempty"`
}

type snapshotLogEntry struct {
	SnapshotID  int64 `json:"snapshot-id"`
	TimestampMs int64 `json:"timestamp-ms"`
}

type metadataLogEntry struct {
	MetadataFile string `json:"metadata-file"`
	TimestampMs  int64  `json:"timestamp-ms"`
}

// schemaField is a top-level field of an Iceberg schema.
type schemaField struct {
	ID       int             `json:"id"`
	Name     string          `json:"name"`
	Required bool            `json:"required"`
	Type     json.RawMessage `json:"type"`
}

// maxMetadataLog bounds the metadata-log, as the Java writer's
// write.metadata.previous-versions-max default (100) does.
const maxMetadataLog = 100

// nameMappingKey is the table property with the default name mapping:
// Plume's Parquet files carry no Iceberg field ids, so readers map their
// columns to fields by name.
const nameMappingKey = "schema.name-mapping.default"

type metadataAlias tableMetadata

func (m *tableMetadata) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, (*metadataAlias)(m)); err != nil {
		return err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return err
	}
	for _, k := range knownMetadataKeys {
		delete(all, k)
	}
	m.extra = all
	if m.CurrentSnapshotID != nil && *m.CurrentSnapshotID == -1 {
		m.CurrentSnapshotID = nil // the v1/v2 "no snapshot" sentinel
	}
	return nil
}

func (m *tableMetadata) MarshalJSON() ([]byte, error) {
	b, err := json.Marshal((*metadataAlias)(m))
	if err != nil || len(m.extra) == 0 {
		return b, err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return nil, err
	}
	for k, v := range m.extra {
		if _, ok := all[k]; !ok {
			all[k] = v
		}
	}
	return json.Marshal(all)
}

var knownMetadataKeys = []string{"format-version", "table-uuid", "location", "last-sequence-number", "last-updated-ms",
	"last-column-id", "schemas", "current-schema-id", "partition-specs", "default-spec-id", "last-partition-id",
	"properties", "current-snapshot-id", "snapshots", "snapshot-log", "metadata-log", "sort-orders",
	"default-sort-order-id", "refs"}

func parseTableMetadata(b []byte) (*tableMetadata, error) {
	var m tableMetadata
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("bad Iceberg table metadata: %v", err)
	}
	if m.FormatVersion != 2 {
		return nil, fmt.Errorf("Iceberg table format version %d: Plume appends to version 2 tables only", m.FormatVersion)
	}
	return &m, nil
}

// currentFields is the current schema's top-level fields.
func (m *tableMetadata) currentFields() ([]schemaField, json.RawMessage, error) {
	for _, raw := range m.Schemas {
		var s struct {
			SchemaID int           `json:"schema-id"`
			Fields   []schemaField `json:"fields"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, nil, fmt.Errorf("bad Iceberg schema: %v", err)
		}
		if s.SchemaID == m.CurrentSchemaID {
			return s.Fields, raw, nil
		}
	}
	return nil, nil, fmt.Errorf("Iceberg table has no schema %d", m.CurrentSchemaID)
}

func (m *tableMetadata) snapshotByID(id int64) *snapshot {
	for i := range m.Snapshots {
		if m.Snapshots[i].SnapshotID == id {
			return &m.Snapshots[i]
		}
	}
	return nil
}

func (m *tableMetadata) currentSnapshot() *snapshot {
	if m.CurrentSnapshotID == nil {
		return nil
	}
	return m.snapshotByID(*m.CurrentSnapshotID)
}

// lastPlumeSeq walks back from the current snapshot to the newest one
// Plume wrote (another writer, such as a compaction, may have committed
// after it) and returns its commit-seq.
func (m *tableMetadata) lastPlumeSeq() (int64, bool) {
	snap := m.currentSnapshot()
	for seen := 0; snap != nil && seen <= len(m.Snapshots); seen++ {
		if v, ok := snap.Summary[summarySeq]; ok {
			n, err := strconv.ParseInt(v, 10, 64)
			return n, err == nil
		}
		if snap.ParentSnapshotID == nil {
			break
		}
		snap = m.snapshotByID(*snap.ParentSnapshotID)
	}
	return 0, false
}

// icebergType is the Iceberg type of a lake column type (the same types
// the Parquet files carry, see colType.arrowType).
func icebergType(t colType) string {
	switch t.kind {
	case "int32":
		return "int"
	case "int64":
		return "long"
	case "float32":
		return "float"
	case "float64":
		return "double"
	case "bool":
		return "boolean"
	case "decimal":
		return fmt.Sprintf("decimal(%d,%d)", t.prec, t.scale)
	case "binary":
		return "binary"
	case "date":
		return "date"
	case "timestamp":
		return "timestamp"
	case "timestamptz":
		return "timestamptz"
	}
	return "string" // string, json
}

// tableColumns is a manifest table's columns with the metadata columns
// first, as in the files.
func tableColumns(cols []column) ([]column, error) {
	out := make([]column, 0, len(metaColumns)+len(cols))
	for _, mc := range metaColumns {
		out = append(out, column{Name: mc.name, Type: mc.typ.String()})
	}
	for _, c := range cols {
		if _, err := parseColType(c.Type); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func newField(id int, c column) schemaField {
	ct, _ := parseColType(c.Type) // checked by tableColumns
	t, _ := json.Marshal(icebergType(ct))
	return schemaField{ID: id, Name: c.Name, Type: t}
}

// newTableMetadata is the first metadata of a table: the columns with
// field ids 1..n, all optional, unpartitioned, unsorted, no snapshot.
func newTableMetadata(location string, cols []column, nowMs int64) (*tableMetadata, error) {
	fields := make([]schemaField, len(cols))
	for i, c := range cols {
		fields[i] = newField(i+1, c)
	}
	sc, err := json.Marshal(map[string]any{"type": "struct", "schema-id": 0, "fields": fields})
	if err != nil {
		return nil, err
	}
	nm, err := json.Marshal(nameMapping(fields))
	if err != nil {
		return nil, err
	}
	return &tableMetadata{
		FormatVersion:   2,
		TableUUID:       newUUID(),
		Location:        location,
		LastUpdatedMs:   nowMs,
		LastColumnID:    len(fields),
		Schemas:         []json.RawMessage{sc},
		PartitionSpecs:  json.RawMessage(`[{"spec-id":0,"fields":[]}]`),
		LastPartitionID: 999, // no partition field yet; ids start at 1000
		Properties:      map[string]string{nameMappingKey: string(nm)},
		SortOrders:      json.RawMessage(`[{"order-id":0,"fields":[]}]`),
	}, nil
}

type nameMappingEntry struct {
	FieldID int      `json:"field-id"`
	Names   []string `json:"names"`
}

func nameMapping(fields []schemaField) []nameMappingEntry {
	out := make([]nameMappingEntry, len(fields))
	for i, f := range fields {
		out[i] = nameMappingEntry{FieldID: f.ID, Names: []string{f.Name}}
	}
	return out
}

// evolve adds the columns the current schema lacks (columns added at the
// source) as a new schema with fresh field ids, and maps them by name.
// Files written before keep fewer columns; readers see null there.
func (m *tableMetadata) evolve(cols []column) (bool, error) {
	fields, raw, err := m.currentFields()
	if err != nil {
		return false, err
	}
	have := map[string]bool{}
	for _, f := range fields {
		have[f.Name] = true
	}
	var added []schemaField
	for _, c := range cols {
		if !have[c.Name] {
			m.LastColumnID++
			added = append(added, newField(m.LastColumnID, c))
		}
	}
	if len(added) == 0 {
		if m.Properties[nameMappingKey] == "" {
			return m.setNameMapping(nameMapping(fields))
		}
		return false, nil
	}
	var sc map[string]json.RawMessage
	if err := json.Unmarshal(raw, &sc); err != nil {
		return false, err
	}
	var rawFields []json.RawMessage
	if err := json.Unmarshal(sc["fields"], &rawFields); err != nil {
		return false, err
	}
	for _, f := range added {
		b, _ := json.Marshal(f)
		rawFields = append(rawFields, b)
	}
	newID := 0
	for _, s := range m.Schemas {
		var h struct {
			SchemaID int `json:"schema-id"`
		}
		_ = json.Unmarshal(s, &h)
		if h.SchemaID >= newID {
			newID = h.SchemaID + 1
		}
	}
	sc["fields"], _ = json.Marshal(rawFields)
	sc["schema-id"], _ = json.Marshal(newID)
	nb, err := json.Marshal(sc)
	if err != nil {
		return false, err
	}
	m.Schemas = append(m.Schemas, nb)
	m.CurrentSchemaID = newID
	// The name mapping: the existing one (it may have aliases another
	// writer added) plus the new fields.
	var nm []json.RawMessage
	if cur := m.Properties[nameMappingKey]; cur != "" {
		if err := json.Unmarshal([]byte(cur), &nm); err != nil {
			nm = nil
		}
	}
	if nm == nil {
		for _, e := range nameMapping(fields) {
			b, _ := json.Marshal(e)
			nm = append(nm, b)
		}
	}
	for _, e := range nameMapping(added) {
		b, _ := json.Marshal(e)
		nm = append(nm, b)
	}
	return m.setNameMapping(nm)
}

func (m *tableMetadata) setNameMapping(v any) (bool, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return false, err
	}
	if m.Properties == nil {
		m.Properties = map[string]string{}
	}
	m.Properties[nameMappingKey] = string(b)
	return true, nil
}

// addSnapshot makes snap the table's current snapshot on the main branch
// and records the metadata file it replaces (prev) in the metadata-log.
func (m *tableMetadata) addSnapshot(snap snapshot, prev string, prevMs int64) {
	m.Snapshots = append(m.Snapshots, snap)
	id := snap.SnapshotID
	m.CurrentSnapshotID = &id
	m.LastSequenceNumber = snap.SequenceNumber
	m.LastUpdatedMs = snap.TimestampMs
	m.SnapshotLog = append(m.SnapshotLog, snapshotLogEntry{SnapshotID: id, TimestampMs: snap.TimestampMs})
	if prev != "" {
		m.MetadataLog = append(m.MetadataLog, metadataLogEntry{MetadataFile: prev, TimestampMs: prevMs})
		if n := len(m.MetadataLog); n > maxMetadataLog {
			m.MetadataLog = append([]metadataLogEntry(nil), m.MetadataLog[n-maxMetadataLog:]...)
		}
	}
	if m.Refs == nil {
		m.Refs = map[string]json.RawMessage{}
	}
	ref := map[string]json.RawMessage{}
	if old, ok := m.Refs["main"]; ok {
		_ = json.Unmarshal(old, &ref) // keep retention settings
	}
	ref["snapshot-id"], _ = json.Marshal(id)
	ref["type"] = json.RawMessage(`"branch"`)
	m.Refs["main"], _ = json.Marshal(ref)
}

// metadataVersion is the NNNNN of a metadata file name
// <NNNNN>-<uuid>.metadata.json, or -1.
func metadataVersion(loc string) int {
	base := loc[strings.LastIndexByte(loc, '/')+1:]
	v, _, ok := strings.Cut(base, "-")
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return -1
	}
	return n
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// newSnapshotID is a random positive 63-bit id, as the Java writer uses.
func newSnapshotID() int64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := int64(binary.BigEndian.Uint64(b[:]) &^ (1 << 63))
	if id == 0 {
		id = 1
	}
	return id
}
