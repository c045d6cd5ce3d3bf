package postgres

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/testharness"
)

// replayEvent is a change reduced to what replaying state needs.
type replayEvent struct {
	ID        string          `json:"id"`
	Op        string          `json:"op"`
	Table     string          `json:"table"`
	Key       string          `json:"key"`                  // subject
	BeforeKey string          `json:"before_key,omitempty"` // subject of the before image
	After     json.RawMessage `json:"after,omitempty"`
	Snapshot  bool            `json:"snapshot,omitempty"`
}

func toReplay(c *event.Change) replayEvent {
	e := replayEvent{ID: c.ID(), Op: c.Op.Code(), Table: c.Table.QualifiedName(), Key: c.Subject(), Snapshot: c.Snapshot}
	if c.Before != nil {
		b := *c
		b.After = nil
		e.BeforeKey = b.Subject()
	}
	if c.After != nil {
		e.After = json.RawMessage(imageJSON(c.Table, c.After))
	}
	return e
}

// replayState applies events: state[table][key] = after image.
type replayState map[string]map[string]map[string]any

// apply applies one event and checks it is consistent with the state so
// far, as a consumer keyed by primary key would see it: a read or insert
// must not find its key, an update or delete must, and an update that
// changes the key must not find the new key (its old key may already be
// gone when the old key's chunk was read after the change).
func (s replayState) apply(t testing.TB, e replayEvent) { s.applyMode(t, e, true) }

// upsert applies one event without the consistency checks, for consumers
// whose state starts empty while the table was not (re-snapshots).
func (s replayState) upsert(t testing.TB, e replayEvent) { s.applyMode(t, e, false) }

func (s replayState) applyMode(t testing.TB, e replayEvent, strict bool) {
	t.Helper()
	tb := s[e.Table]
	if tb == nil {
		tb = map[string]map[string]any{}
		s[e.Table] = tb
	}
	_, exists := tb[e.Key]
	bad := func(why string) {
		if strict {
			t.Errorf("inconsistent event %s %s %s (before %s): %s", e.ID, e.Op, e.Key, e.BeforeKey, why)
		}
	}
	switch e.Op {
	case "r", "c":
		if exists {
			bad("key already present")
		}
	case "u":
		if e.BeforeKey != "" && e.BeforeKey != e.Key {
			if exists {
				bad("new key already present")
			}
			delete(tb, e.BeforeKey)
		} else if !exists {
			bad("key absent")
		}
	case "d":
		key := e.BeforeKey
		if key == "" {
			key = e.Key
		}
		if _, ok := tb[key]; !ok {
			bad("key absent")
		}
		delete(tb, key)
		return
	case "t":
		clear(tb)
		return
	}
	var row map[string]any
	d := json.NewDecoder(bytes.NewReader(e.After))
	d.UseNumber()
	if err := d.Decode(&row); err != nil {
		t.Fatalf("event %s: %v", e.ID, err)
	}
	tb[e.Key] = row
}

// dbState reads tables into the same shape: to_jsonb of each row, keyed by
// the key columns rendered like Change.Subject (int and plain text keys).
func dbState(t testing.TB, pg *testharness.PG, db string, tables map[string][]string) replayState {
	t.Helper()
	conn := pg.Connect(t, db)
	st := replayState{}
	for table, key := range tables {
		rows, err := conn.Query(context.Background(), `SELECT to_jsonb(x)::text FROM `+table+` x`)
		if err != nil {
			t.Fatal(err)
		}
		tb := map[string]map[string]any{}
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			var row map[string]any
			d := json.NewDecoder(strings.NewReader(s))
			d.UseNumber()
			if err := d.Decode(&row); err != nil {
				t.Fatal(err)
			}
			var parts []string
			for _, k := range key {
				parts = append(parts, fmt.Sprintf("%s=%v", k, row[k]))
			}
			tb[strings.Join(parts, ",")] = row
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		st[table] = tb
	}
	return st
}

// compareState reports differences between replayed and actual state.
func compareState(t testing.TB, got, want replayState) {
	t.Helper()
	n := 0
	for table, rows := range want {
		g := got[table]
		for k, row := range rows {
			if gr, ok := g[k]; !ok {
				if n++; n < 20 {
					t.Errorf("%s %s: missing from replayed state (want %v)", table, k, row)
				}
			} else if !jsonValueEqual(any(gr), any(row)) {
				if n++; n < 20 {
					t.Errorf("%s %s: replayed %v, table has %v", table, k, gr, row)
				}
			}
		}
		for k, row := range g {
			if _, ok := rows[k]; !ok {
				if n++; n < 20 {
					t.Errorf("%s %s: replayed row %v not in table", table, k, row)
				}
			}
		}
	}
	if n > 0 {
		t.Errorf("%d differences", n)
	}
}

// checkUniqueIDs fails on any event id seen twice.
func checkUniqueIDs(t testing.TB, evs []replayEvent) {
	t.Helper()
	seen := map[string]bool{}
	dups := 0
	for _, e := range evs {
		if seen[e.ID] {
			if dups++; dups < 10 {
				t.Errorf("duplicate event id %s", e.ID)
			}
		}
		seen[e.ID] = true
	}
}

// ---- child process: the source running against a file "Kafka" ----

// fileLine is one committed transaction in the emitter file.
type fileLine struct {
	Events []replayEvent   `json:"events"`
	CP     json.RawMessage `json:"cp"`
}

// fileEmitter writes each committed transaction as one line (a single
// write(2) with O_APPEND: a SIGKILL leaves either the whole line or none)
// and then acks it, like capture after a Kafka commit.
type fileEmitter struct {
	f       *os.File
	src     *Source
	pending []replayEvent
	delay   time.Duration
}

func (e *fileEmitter) Emit(ctx context.Context, c *event.Change) error {
	e.pending = append(e.pending, toReplay(c))
	return nil
}

func (e *fileEmitter) Commit(ctx context.Context, cp []byte) error {
	snap := len(e.pending) > 0 && e.pending[0].Snapshot
	b, err := json.Marshal(fileLine{Events: e.pending, CP: cp})
	if err != nil {
		return err
	}
	if _, err := e.f.Write(append(b, '\n')); err != nil {
		return err
	}
	e.pending = nil
	e.src.Ack(cp)
	if e.delay > 0 && snap { // slow snapshot chunks down, not the stream
		time.Sleep(e.delay)
	}
	return nil
}

const helperEnv = "PLUME_PG_TEST_HELPER"

// helperConfig is what the parent passes to the child.
type helperConfig struct {
	Config Config        `json:"config"`
	Out    string        `json:"out"`
	Delay  time.Duration `json:"delay"`
}

// helperMain runs the source in a child process when the test binary is
// started with PLUME_PG_TEST_HELPER set. It resumes from the last
// checkpoint in the output file, like capture would.
func helperMain() bool {
	spec := os.Getenv(helperEnv)
	if spec == "" {
		return false
	}
	var hc helperConfig
	if err := json.Unmarshal([]byte(spec), &hc); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(2)
	}
	lines, _ := readFileLines(hc.Out)
	var from []byte
	if len(lines) > 0 {
		from = lines[len(lines)-1].CP
	}
	f, err := os.OpenFile(hc.Out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(2)
	}
	src, err := New(hc.Config, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	fmt.Fprintf(os.Stderr, "helper: running from %s\n", from)
	err = src.Run(ctx, from, &fileEmitter{f: f, src: src, delay: hc.Delay})
	src.Close()
	fmt.Fprintln(os.Stderr, "helper: Run returned:", err)
	if ctx.Err() != nil {
		os.Exit(0)
	}
	os.Exit(1)
	return true
}

// readFileLines parses the emitter file, ignoring a torn last line.
func readFileLines(path string) ([]fileLine, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []fileLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 256<<20)
	for sc.Scan() {
		var l fileLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			break // torn write at the end
		}
		out = append(out, l)
	}
	return out, nil
}

func fileEvents(lines []fileLine) []replayEvent {
	var out []replayEvent
	for _, l := range lines {
		out = append(out, l.Events...)
	}
	return out
}

// writer runs random inserts, updates (including key changes) and deletes
// against an int-keyed and a text-keyed table until stopped, bounded in
// count.
type writer struct {
	stop chan struct{}
	done chan struct{}
	ops  int
	err  error
}

func startWriter(t testing.TB, pg *testharness.PG, db string, maxOps int, seed int64) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	conn := pg.Connect(t, db)
	go func() {
		defer close(w.done)
		ctx := context.Background()
		rnd := xorshift(seed)
		for w.ops < maxOps {
			select {
			case <-w.stop:
				return
			default:
			}
			var sql string
			id := rnd(5000) + 1
			switch rnd(8) {
			case 0, 1:
				sql = fmt.Sprintf(`INSERT INTO ints VALUES (%d, 'w%d', %d) ON CONFLICT (id) DO UPDATE SET v = 'upsert'`, id, w.ops, w.ops)
			case 2, 3:
				sql = fmt.Sprintf(`UPDATE ints SET v = 'u%d', n = n + 1 WHERE id = %d`, w.ops, id)
			case 4:
				sql = fmt.Sprintf(`DELETE FROM ints WHERE id = %d`, id)
			case 5:
				// Key change, possibly across chunks.
				sql = fmt.Sprintf(`UPDATE ints SET id = %d WHERE id = %d AND NOT EXISTS (SELECT 1 FROM ints WHERE id = %d)`, id+5000+w.ops, id, id+5000+w.ops)
			case 6:
				sql = fmt.Sprintf(`INSERT INTO texts VALUES ('k%05d', %d) ON CONFLICT (k) DO UPDATE SET n = texts.n + 1`, rnd(3000), w.ops)
			case 7:
				sql = fmt.Sprintf(`DELETE FROM texts WHERE k = 'k%05d'`, rnd(3000))
			}
			if _, err := conn.Exec(ctx, sql); err != nil {
				w.err = err
				return
			}
			w.ops++
			if w.ops%10 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	return w
}

func (w *writer) finish(t testing.TB) {
	t.Helper()
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	if w.err != nil {
		t.Fatalf("writer: %v", w.err)
	}
}

func createSnapshotTables(t testing.TB, pg *testharness.PG, db string) {
	pg.Exec(t, db, `CREATE TABLE ints (id int PRIMARY KEY, v text, n int);
		INSERT INTO ints SELECT g, 'v' || g, g FROM generate_series(1, 4000) g;
		CREATE TABLE texts (k text PRIMARY KEY, n int);
		INSERT INTO texts SELECT 'k' || lpad(g::text, 5, '0'), g FROM generate_series(1, 2000) g;
		CREATE TABLE marker (id int PRIMARY KEY)`)
}

var snapshotTables = map[string][]string{"public.ints": {"id"}, "public.texts": {"k"}}

// xorshift returns a small deterministic generator of ints in [0, n) for
// the test writers (reproducible from seed).
func xorshift(seed int64) func(n int) int {
	x := uint64(seed)*2654435761 + 1
	return func(n int) int {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		return int(x % uint64(n))
	}
}
