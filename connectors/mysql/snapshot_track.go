package mysql

import (
	"sync"

	"github.com/plumecdc/plume/pkg/event"
)

// dirtyTracker records which keys of a table the stream changed after a
// snapshot chunk was read, so the chunk's stale copies of those rows can be
// dropped when the chunk is emitted (DBLog's watermark reconciliation, with
// binlog positions as watermarks).
//
// Invariant: for every registration r of table T, every row change of T
// that the stream processes at a position p > r.start is recorded with p.
// The stream processes events in binlog order and advance() publishes its
// position before each event, so events not recorded for r are exactly
// those at positions <= r.start. A chunk read at low watermark L is valid if
// L >= r.start: then every change after L is recorded, and "key changed
// after L" is decidable at emission time.
type dirtyTracker struct {
	mu        sync.Mutex
	streamPos binlogPos
	tables    map[string]*tableDirty
}

type tableDirty struct {
	regs map[*registration]struct{}
	keys map[string]binlogPos // key subject -> position of its last change
}

// registration is one chunk's (watermark mode) or one table's (lock mode)
// interest in a table's changes.
type registration struct {
	table string
	start binlogPos // stream position at registration
	floor binlogPos // prune bound: start, raised to the low watermark once known
}

func newDirtyTracker(pos binlogPos) *dirtyTracker {
	return &dirtyTracker{streamPos: pos, tables: map[string]*tableDirty{}}
}

// advance publishes the position of the event the stream is processing.
func (d *dirtyTracker) advance(p binlogPos) {
	d.mu.Lock()
	if p.Compare(d.streamPos) > 0 {
		d.streamPos = p
	}
	d.mu.Unlock()
}

// register starts recording changes of table.
func (d *dirtyTracker) register(table string) *registration {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := &registration{table: table, start: d.streamPos, floor: d.streamPos}
	td := d.tables[table]
	if td == nil {
		td = &tableDirty{regs: map[*registration]struct{}{}, keys: map[string]binlogPos{}}
		d.tables[table] = td
	}
	td.regs[r] = struct{}{}
	return r
}

// setLow records the chunk's low watermark (entries at or below it cannot
// matter to this registration any more).
func (d *dirtyTracker) setLow(r *registration, low binlogPos) {
	d.mu.Lock()
	if low.Compare(r.floor) > 0 {
		r.floor = low
	}
	d.mu.Unlock()
}

// release ends a registration and drops entries no registration needs.
func (d *dirtyTracker) release(r *registration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	td := d.tables[r.table]
	if td == nil {
		return
	}
	delete(td.regs, r)
	if len(td.regs) == 0 {
		delete(d.tables, r.table)
		return
	}
	var floor binlogPos
	first := true
	for o := range td.regs {
		if first || o.floor.Compare(floor) < 0 {
			floor, first = o.floor, false
		}
	}
	for k, p := range td.keys {
		if p.Compare(floor) <= 0 {
			delete(td.keys, k)
		}
	}
}

// observe records a row change of table at position p (before and after
// images, since an update may change the key).
func (d *dirtyTracker) observe(table string, t *event.Table, before, after []event.Value, p binlogPos) {
	d.mu.Lock()
	defer d.mu.Unlock()
	td := d.tables[table]
	if td == nil {
		return
	}
	for _, img := range [2][]event.Value{before, after} {
		if img != nil {
			td.keys[keySubject(t, img)] = p
		}
	}
}

// tracking reports whether the stream recorded any changed key of table
// (if not, changedAfter is false for every key).
func (d *dirtyTracker) tracking(table string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	td := d.tables[table]
	return td != nil && len(td.keys) > 0
}

// changedAfter reports whether key of table changed at a position > low.
func (d *dirtyTracker) changedAfter(table, key string, low binlogPos) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	td := d.tables[table]
	if td == nil {
		return false
	}
	p, ok := td.keys[key]
	return ok && p.Compare(low) > 0
}

func (d *dirtyTracker) position() binlogPos {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.streamPos
}

// keySubject renders a row image's key as event.Change.Subject does.
func keySubject(t *event.Table, img []event.Value) string {
	c := event.Change{Table: t, After: img}
	return c.Subject()
}
