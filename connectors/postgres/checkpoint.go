package postgres

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// checkpoint is the source's resume state. Capture stores it atomically with
// the events of the Commit that carried it, so every invariant below is about
// what is already in Kafka when a checkpoint is returned to Run.
//
// Encoding: JSON, for example
//
//	{"v":1,"slot":"plume_orders","lsn":"0/1A2B3C8"}
//
// and while a snapshot runs or its catch-up window is open
//
//	{"v":1,"slot":"plume_orders","lsn":"0/1A2B3C8",
//	 "snapshot":{"id":"0/1A2B3C8","started":"2025-01-02T03:04:05.123456Z",
//	   "points":["0/1A2B3C8","0/1B000000"],"done":false,
//	   "tables":[{"table":"public.orders","key":["id"],"kinds":["int"],
//	              "bounds":[["10000"],["20000"]],"read":[1,2,0]}]}}
//
// Invariants:
//
//  1. Stream position. Every transaction whose commit record ends at or
//     before lsn (and every heartbeat message at or before lsn) has been
//     emitted; none after it has. lsn is a commit's TransactionEndLSN, a
//     heartbeat message's LSN or the slot's consistent point. Resuming
//     therefore starts replication at lsn and drops transactions whose
//     commit LSN (BEGIN's FinalLSN) is below lsn; commit records do not
//     overlap, so that is exactly "end LSN <= lsn".
//  2. The slot's confirmed_flush_lsn never exceeds lsn: the source confirms
//     only LSNs handed to Ack, which capture calls after the Commit carrying
//     them is durable. A checkpoint below confirmed_flush_lsn means WAL the
//     checkpoint still needs is gone (error, never a silent re-snapshot).
//  3. Snapshot. While a snapshot runs, lsn is its stream start P1 (the
//     consistent point of the slot or, when the slot already existed, its
//     confirmed_flush_lsn) and stays there: the stream starts only when every
//     chunk is read. A chunk is marked read (read[i] = k, points[k-1] being
//     the consistent point of the snapshot it was read in) in the same Commit
//     as its rows, so a chunk is either fully in Kafka and marked, or absent
//     and unmarked. Chunk bounds are fixed in the first snapshot Commit, with
//     one exception that keeps this: a chunk emitted in parts is split at
//     each part's last key when the part commits (the rows up to that key
//     are in Kafka and marked, the rest of the chunk is unmarked), and its
//     parts, all marked alike, are merged back when the last one commits
//     (snapshot.go, emitChunk). So for every key, "its chunk is marked k"
//     means its row was emitted from the snapshot at points[k-1], in every
//     run.
//  4. Catch-up rule. Streaming from P1, a change committed at LSN L (BEGIN's
//     FinalLSN) to a key in chunk i is emitted iff L >= points[read[i]-1]:
//     older changes are already contained in the snapshot the chunk was read
//     in, newer ones are not. The snapshot state is dropped from checkpoints
//     once lsn >= max(points) (no later change can be older than a point).
type checkpoint struct {
	V    int        `json:"v"`
	Slot string     `json:"slot"`
	LSN  string     `json:"lsn"`
	Snap *snapState `json:"snapshot,omitempty"`
	// Resnap lists requested re-snapshots, the first one running
	// (resnapshot.go). Each chunk's rows are Committed with the chunk's
	// last key, at the LSN of the chunk's high watermark.
	Resnap []*resnapState `json:"resnapshot,omitempty"`

	lsn pglogrepl.LSN // parsed LSN
}

const checkpointVersion = 1

// snapState is the progress of one snapshot.
type snapState struct {
	// ID is the snapshot's id, the consistent point P1 of the stream start:
	// Pos of snapshot rows is "snapshot:<ID>", stable across resumes.
	ID      string       `json:"id"`
	Started time.Time    `json:"started"` // Commit time of snapshot rows
	Points  []string     `json:"points"`  // consistent points chunks were read at
	Done    bool         `json:"done"`    // every chunk read
	Tables  []*snapTable `json:"tables"`

	points []pglogrepl.LSN
}

// snapTable is the chunk plan and progress of one table.
type snapTable struct {
	Table string   `json:"table"` // schema.table
	Key   []string `json:"key,omitempty"`
	// Kinds gives each key column's comparison kind (keys.go): "int",
	// "oid", "bool", "text" (byte order, COLLATE "C"), "uuid", "bytea",
	// "numeric", "date", "timestamp" or "timestamptz". A table without a
	// chunkable key has no Key and one chunk.
	Kinds []string `json:"kinds,omitempty"`
	// Bounds are the ascending inclusive upper bounds of chunks 0..n-2, each
	// the key's canonical text form (keys.go: the value's text; hex for
	// bytea; PostgreSQL's day or microsecond number since 2000-01-01, or
	// "infinity"/"-infinity", for dates and timestamps); chunk i holds keys
	// in (Bounds[i-1], Bounds[i]], the last chunk is unbounded above.
	Bounds [][]string `json:"bounds,omitempty"`
	// Read[i] is 0 while chunk i is unread, else k: it was read in the
	// snapshot taken at Points[k-1].
	Read []int `json:"read"`

	bounds [][]keyVal // parsed Bounds
}

func (t *snapTable) chunks() int { return len(t.Bounds) + 1 }

// encode renders the checkpoint.
func (c *checkpoint) encode() []byte {
	c.V = checkpointVersion
	c.LSN = c.lsn.String()
	b, err := json.Marshal(c)
	if err != nil {
		panic("postgres: encoding checkpoint: " + err.Error()) // only plain types inside
	}
	return b
}

// decodeCheckpoint parses a checkpoint; nil or empty input gives nil.
func decodeCheckpoint(b []byte) (*checkpoint, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var c checkpoint
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("postgres: invalid checkpoint %.200q: %w", b, err)
	}
	if c.V != checkpointVersion {
		return nil, fmt.Errorf("postgres: unsupported checkpoint version %d", c.V)
	}
	var err error
	if c.lsn, err = pglogrepl.ParseLSN(c.LSN); err != nil {
		return nil, fmt.Errorf("postgres: checkpoint LSN %q: %w", c.LSN, err)
	}
	if c.Snap != nil {
		if err := c.Snap.parse(); err != nil {
			return nil, err
		}
	}
	return &c, nil
}

func (s *snapState) parse() error {
	s.points = s.points[:0]
	for _, p := range s.Points {
		l, err := pglogrepl.ParseLSN(p)
		if err != nil {
			return fmt.Errorf("postgres: checkpoint snapshot point %q: %w", p, err)
		}
		s.points = append(s.points, l)
	}
	for _, t := range s.Tables {
		if err := t.parse(); err != nil {
			return err
		}
		if len(t.Read) != t.chunks() {
			return fmt.Errorf("postgres: checkpoint table %s: %d chunks but %d read marks", t.Table, t.chunks(), len(t.Read))
		}
		for _, r := range t.Read {
			if r < 0 || r > len(s.points) {
				return fmt.Errorf("postgres: checkpoint table %s: read mark %d out of range", t.Table, r)
			}
		}
	}
	return nil
}

func (t *snapTable) parse() error {
	t.bounds = make([][]keyVal, len(t.Bounds))
	for i, b := range t.Bounds {
		if len(b) != len(t.Kinds) || len(t.Key) != len(t.Kinds) {
			return fmt.Errorf("postgres: checkpoint table %s: bound %d has %d values for %d key columns", t.Table, i, len(b), len(t.Kinds))
		}
		kv := make([]keyVal, len(b))
		for j, s := range b {
			v, err := parseKeyText(t.Kinds[j], s)
			if err != nil {
				return fmt.Errorf("postgres: checkpoint table %s bound %d: %w", t.Table, i, err)
			}
			kv[j] = v
		}
		t.bounds[i] = kv
	}
	return nil
}

// maxPoint is the highest point any chunk was read at (0 if none).
func (s *snapState) maxPoint() pglogrepl.LSN {
	var m pglogrepl.LSN
	for _, t := range s.Tables {
		for _, r := range t.Read {
			if r > 0 && s.points[r-1] > m {
				m = s.points[r-1]
			}
		}
	}
	return m
}

// addPoint records a consistent point and returns its read mark.
func (s *snapState) addPoint(p pglogrepl.LSN) int {
	for i, q := range s.points {
		if q == p {
			return i + 1
		}
	}
	s.points = append(s.points, p)
	s.Points = append(s.Points, p.String())
	return len(s.points)
}

func (s *snapState) table(name string) *snapTable {
	for _, t := range s.Tables {
		if t.Table == name {
			return t
		}
	}
	return nil
}

// lsnOf extracts only the LSN of an encoded checkpoint (for Ack).
func lsnOf(cp []byte) (pglogrepl.LSN, error) {
	var c struct {
		LSN string `json:"lsn"`
	}
	if err := json.Unmarshal(cp, &c); err != nil {
		return 0, err
	}
	return pglogrepl.ParseLSN(c.LSN)
}
