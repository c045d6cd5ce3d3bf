package mysql

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"
)

// checkpoint is the source's resume point, committed to Kafka atomically
// with the events it covers (capture.Source). JSON, for example:
//
//	{"v":1,"flavor":"mariadb","gtid":"0-1-42","file":"binlog.000003","pos":4567,
//	 "snapshot":{"id":"20260101T000000.000Z","mode":"watermark","start_ms":1767225600000,
//	             "tables":["shop.orders","shop.users"],"after":[{"t":"i","v":"10000"}],
//	             "chunks":1,"rows":10000}}
//
// Invariants, and why they hold:
//
//   - GTID/File/Pos name a transaction boundary: the position right after the
//     last transaction whose changes (if any) were emitted before this
//     checkpoint. Checkpoints are only produced at XID / COMMIT / DDL query
//     events, and at heartbeats or chunk emissions while no transaction is
//     open, so a restart never begins inside a transaction (whose TABLE_MAP
//     would be missing).
//   - Resuming "strictly after" the checkpoint: by GTID, the server sends
//     only transactions not in the set; by file/pos, the server sends events
//     from the boundary on. Either way the next transaction read is the first
//     one not covered.
//   - GTID is authoritative when present (it survives a failover to another
//     server with the same GTIDs); File/Pos are then informational and are
//     used for snapshot watermark comparisons and lag.
//   - Snapshot progress: Tables[0] is the table being copied and After the
//     key of the upper bound of the last chunk emitted, or of the last row
//     of the last part of a chunk emitted (absent: from the start). Every
//     row with a key up to After was emitted or superseded, none after it:
//     rows are emitted in key order, and a chunk is split into parts only
//     for a primary key, so no later row has a key equal to After (snapshot.go).
//     Each part's rows are emitted in the same source transaction as the
//     checkpoint that advances After past them, so after a crash either
//     both are in Kafka or neither is: no row is lost or duplicated.
type checkpoint struct {
	V        int            `json:"v"`
	Flavor   string         `json:"flavor"`
	GTID     string         `json:"gtid,omitempty"`
	File     string         `json:"file"`
	Pos      uint32         `json:"pos"`
	Snapshot *snapshotState `json:"snapshot,omitempty"`
}

const checkpointVersion = 1

// snapshotState is the checkpointed progress of a running snapshot.
type snapshotState struct {
	// ID names this snapshot run; snapshot rows have Pos "snapshot:<ID>". It
	// stays the same across restarts until the run completes.
	ID   string `json:"id"`
	Mode string `json:"mode"`
	// StartMS is the run's start time (the Commit time of its rows).
	StartMS int64 `json:"start_ms"`
	// Tables still to copy, in order; Tables[0] is in progress.
	Tables []string `json:"tables"`
	// After is Tables[0]'s key value of the last chunk's upper bound, or of
	// the last row of a chunk's last emitted part.
	After  []keyValue `json:"after,omitempty"`
	Chunks int64      `json:"chunks"`
	Rows   int64      `json:"rows"`
	// Superseded counts chunk rows dropped because the stream had already
	// emitted a newer state of them (watermark reconciliation).
	Superseded int64 `json:"superseded,omitempty"`
}

func (st *snapshotState) clone() *snapshotState {
	if st == nil {
		return nil
	}
	c := *st
	c.Tables = append([]string(nil), st.Tables...)
	c.After = append([]keyValue(nil), st.After...)
	return &c
}

func (st *snapshotState) start() time.Time { return time.UnixMilli(st.StartMS).UTC() }

func newSnapshotState(mode string, tables []string, now time.Time) *snapshotState {
	now = now.UTC().Truncate(time.Millisecond)
	return &snapshotState{
		ID:      now.Format("20060102T150405.000Z"),
		Mode:    mode,
		StartMS: now.UnixMilli(),
		Tables:  tables,
	}
}

func (cp *checkpoint) position() binlogPos { return binlogPos{File: cp.File, Pos: cp.Pos} }

func (cp *checkpoint) encode() []byte {
	cp.V = checkpointVersion
	b, err := json.Marshal(cp)
	if err != nil {
		panic(err) // only plain types: cannot fail
	}
	return b
}

func decodeCheckpoint(b []byte) (*checkpoint, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var cp checkpoint
	if err := json.Unmarshal(b, &cp); err != nil {
		return nil, fmt.Errorf("mysql: checkpoint is not valid JSON: %w", err)
	}
	if cp.V != checkpointVersion {
		return nil, fmt.Errorf("mysql: checkpoint version %d not supported (want %d)", cp.V, checkpointVersion)
	}
	if cp.File == "" && cp.GTID == "" {
		return nil, fmt.Errorf("mysql: checkpoint has neither GTID nor binlog position")
	}
	return &cp, nil
}

// keyValue is one key column value of a chunk bound, typed so it goes back to
// the server exactly as it was read: t is "i" (int64), "u" (uint64), "f"
// (float64, bits), "s" (bytes, base64) or "n" (NULL).
type keyValue struct {
	T string `json:"t"`
	V string `json:"v,omitempty"`
}

func encodeKeyValue(v any) keyValue {
	switch x := v.(type) {
	case nil:
		return keyValue{T: "n"}
	case int64:
		return keyValue{T: "i", V: strconv.FormatInt(x, 10)}
	case uint64:
		return keyValue{T: "u", V: strconv.FormatUint(x, 10)}
	case float64:
		return keyValue{T: "f", V: strconv.FormatUint(math.Float64bits(x), 10)}
	case []byte:
		return keyValue{T: "s", V: base64.StdEncoding.EncodeToString(x)}
	case string:
		return keyValue{T: "s", V: base64.StdEncoding.EncodeToString([]byte(x))}
	}
	panic(fmt.Sprintf("mysql: key value of type %T", v))
}

func (k keyValue) decode() (any, error) {
	switch k.T {
	case "n":
		return nil, nil
	case "i":
		return strconv.ParseInt(k.V, 10, 64)
	case "u":
		return strconv.ParseUint(k.V, 10, 64)
	case "f":
		u, err := strconv.ParseUint(k.V, 10, 64)
		return math.Float64frombits(u), err
	case "s":
		return base64.StdEncoding.DecodeString(k.V)
	}
	return nil, fmt.Errorf("mysql: checkpoint key value type %q", k.T)
}

func encodeKey(vals []any) []keyValue {
	if vals == nil {
		return nil
	}
	out := make([]keyValue, len(vals))
	for i, v := range vals {
		out[i] = encodeKeyValue(v)
	}
	return out
}

func decodeKey(kv []keyValue) ([]any, error) {
	if len(kv) == 0 {
		return nil, nil
	}
	out := make([]any, len(kv))
	for i, k := range kv {
		v, err := k.decode()
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}
