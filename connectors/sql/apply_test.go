package sql

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

func TestUpsertDeleteTruncate(t *testing.T) {
	forEachDB(t, func(t *testing.T, db *testDB) {
		db.exec(t, productsDDL(db))
		tgt, offs := newTarget(t, db, nil)
		if len(offs) != 0 {
			t.Fatalf("fresh Open returned offsets %v", offs)
		}

		b1 := (&msgs{from: 0}).
			ins(product("a", "apple", num("1.50"), num("10"))).
			ins(product("b", "banana", num("0.25"), num("20"))).
			add(event.OpRead, product("c", "cherry", num("12"), nil)).
			batch()
		mustApply(t, tgt, b1)
		wantRows(t, products(t, db), "a|apple|1.50|10", "b|banana|0.25|20", "c|cherry|12.00|NULL")

		b2 := (&msgs{from: 3}).
			upd(product("a", "apple", num("1.75"), num("9"))).
			del(product("b", "banana", num("0.25"), num("20"))).
			del(map[string]any{"sku": "zzz"}). // not there: no error
			batch()
		mustApply(t, tgt, b2)
		wantRows(t, products(t, db), "a|apple|1.75|9", "c|cherry|12.00|NULL")

		// A truncate deletes every row; changes after it in the batch apply.
		b3 := (&msgs{from: 6}).
			ins(product("d", "date", num("3"), num("1"))).
			add(event.OpTruncate, nil).
			ins(product("e", "elderberry", num("4"), num("2"))).
			batch()
		mustApply(t, tgt, b3)
		wantRows(t, products(t, db), "e|elderberry|4.00|2")
		wantOffsets := []string{"pipe|erp|" + testTopic + "|0|9"}
		if got := storedOffsets(t, db); strings.Join(got, ",") != strings.Join(wantOffsets, ",") {
			t.Fatalf("offsets %q, want %q", got, wantOffsets)
		}
	})
}

func TestMultiRowBatching(t *testing.T) {
	forEachDB(t, func(t *testing.T, db *testDB) {
		db.exec(t, productsDDL(db))
		tgt, _ := newTarget(t, db, func(c *Config) { c.BatchSize = 10 })

		m := &msgs{}
		for i := 0; i < 95; i++ {
			m.ins(product(skuN(i), "n", num("1"), num(itoa(i))))
		}
		before := tgt.nstmts
		mustApply(t, tgt, m.batch())
		if n := tgt.nstmts - before; n != 10 {
			t.Errorf("95 upserts with batch_size 10 took %d statements, want 10", n)
		}
		if got := db.rows(t, "SELECT count(*), sum(qty) FROM "+db.schema+".products"); got[0][0] != "95" || got[0][1] != "4465" {
			t.Fatalf("count, sum = %v", got)
		}

		d := &msgs{from: 95}
		for i := 0; i < 25; i++ {
			d.del(map[string]any{"sku": skuN(i)})
		}
		before = tgt.nstmts
		mustApply(t, tgt, d.batch())
		if n := tgt.nstmts - before; n != 3 {
			t.Errorf("25 deletes with batch_size 10 took %d statements, want 3", n)
		}
		if got := db.rows(t, "SELECT count(*) FROM "+db.schema+".products"); got[0][0] != "70" {
			t.Fatalf("count = %v, want 70", got)
		}
	})
}

func skuN(i int) string { return "sku-" + itoa(1000+i) }

func TestPerKeyCoalescing(t *testing.T) {
	forEachDB(t, func(t *testing.T, db *testDB) {
		db.exec(t, productsDDL(db))
		db.exec(t, "INSERT INTO "+db.schema+".products VALUES ('old', 'old', 1, 1), ('keep', 'keep', 2, 2)")
		tgt, _ := newTarget(t, db, nil)

		b := (&msgs{}).
			ins(product("k", "v1", num("1"), num("1"))).
			upd(product("k", "v2", num("2"), num("2"))).
			del(product("k", "v2", num("2"), num("2"))).
			ins(product("k", "v3", num("3"), num("3"))).
			ins(product("gone", "x", num("1"), num("1"))).
			del(product("gone", "x", num("1"), num("1"))).
			upd(product("old", "old2", num("5"), num("5"))).
			del(product("old", "old2", num("5"), num("5"))).
			upd(product("keep", "kept", num("2"), num("2"))).
			batch()
		before := tgt.nstmts
		mustApply(t, tgt, b)
		wantRows(t, products(t, db), "k|v3|3.00|3", "keep|kept|2.00|2")
		// One DELETE for gone and old, one INSERT for k and keep.
		if n := tgt.nstmts - before; n != 2 {
			t.Errorf("statements = %d, want 2", n)
		}
	})
}

func TestDeleteModes(t *testing.T) {
	forEachDB(t, func(t *testing.T, db *testDB) {
		db.exec(t, db.pick(
			`CREATE TABLE erp.products (sku text PRIMARY KEY, name text, price numeric(12,2), qty int, deleted boolean NOT NULL DEFAULT false)`,
			"CREATE TABLE products (sku VARCHAR(64) PRIMARY KEY, name TEXT, price DECIMAL(12,2), qty INT, deleted BOOL NOT NULL DEFAULT 0)"))
		f := db.pick("f", "0")
		tr := db.pick("t", "1")

		t.Run("soft", func(t *testing.T) {
			tgt, _ := newTarget(t, db, func(c *Config) { c.Delete = "soft:deleted" })
			mustApply(t, tgt, (&msgs{}).
				ins(product("a", "A", nil, nil)).
				ins(product("b", "B", nil, nil)).
				del(product("a", "A", nil, nil)).
				batch())
			rows := db.rows(t, "SELECT sku, deleted FROM "+db.schema+".products ORDER BY sku")
			if got := joinRows(rows); got != "a|"+tr+",b|"+f {
				t.Fatalf("after soft delete: %s", got)
			}
			// Re-inserting a soft-deleted key revives it; a truncate marks all.
			mustApply(t, tgt, (&msgs{from: 3}).ins(product("a", "A2", nil, nil)).batch())
			if got := joinRows(db.rows(t, "SELECT sku, deleted FROM "+db.schema+".products ORDER BY sku")); got != "a|"+f+",b|"+f {
				t.Fatalf("after re-insert: %s", got)
			}
			mustApply(t, tgt, (&msgs{from: 4}).add(event.OpTruncate, nil).batch())
			if got := joinRows(db.rows(t, "SELECT sku, deleted FROM "+db.schema+".products ORDER BY sku")); got != "a|"+tr+",b|"+tr {
				t.Fatalf("after truncate: %s", got)
			}
		})
		t.Run("ignore", func(t *testing.T) {
			db.exec(t, "DELETE FROM "+db.schema+".products")
			tgt, _ := newTarget(t, db, func(c *Config) { c.Delete = "ignore" })
			mustApply(t, tgt, (&msgs{from: 100}).
				ins(product("x", "X", nil, nil)).
				del(product("x", "X", nil, nil)).
				add(event.OpTruncate, nil).
				batch())
			if got := joinRows(db.rows(t, "SELECT sku FROM "+db.schema+".products")); got != "x" {
				t.Fatalf("delete: ignore left %q", got)
			}
		})
	})
}

func joinRows(rows [][]string) string {
	var s []string
	for _, r := range rows {
		s = append(s, strings.Join(r, "|"))
	}
	return strings.Join(s, ",")
}

// TestCrashBeforeCommit kills the connection after the rows and offsets
// were written but before COMMIT: nothing may be applied and the offsets
// must not move; the retry applies the batch; replays change nothing.
func TestCrashBeforeCommit(t *testing.T) {
	forEachDB(t, func(t *testing.T, db *testDB) {
		db.exec(t, productsDDL(db))
		tgt, _ := newTarget(t, db, nil)

		b1 := (&msgs{}).ins(product("a", "v1", num("1"), num("1"))).ins(product("b", "v1", num("1"), num("1"))).batch()
		mustApply(t, tgt, b1)

		b2 := (&msgs{from: 2}).upd(product("a", "v2", num("2"), num("2"))).del(product("b", nil, nil, nil)).ins(product("c", "v2", num("2"), num("2"))).batch()
		killed := false
		tgt.beforeCommit = func(ctx context.Context, tx txn) error {
			killed = true
			db.kill(t, tx)
			return nil
		}
		err := apply(t, tgt, b2)
		tgt.beforeCommit = nil
		if !killed {
			t.Fatal("hook did not run")
		}
		if err == nil {
			t.Fatal("Apply succeeded on a killed connection")
		}
		var re *target.RecordErrors
		if target.IsPermanent(err) || errors.As(err, &re) {
			t.Fatalf("a lost connection must be a plain (retried) error, got %v", err)
		}
		wantRows(t, products(t, db), "a|v1|1.00|1", "b|v1|1.00|1")
		if got := storedOffsets(t, db); len(got) != 1 || !strings.HasSuffix(got[0], "|0|2") {
			t.Fatalf("offsets moved: %q", got)
		}

		// A restart: Open returns the stored offsets, authoritative.
		tgt2, offs := newTarget(t, db, nil)
		if want := (target.Offsets{{Topic: testTopic, Partition: 0}: 2}); len(offs) != 1 || offs[target.TopicPartition{Topic: testTopic}] != 2 {
			t.Fatalf("Open offsets %v, want %v", offs, want)
		}

		// The retry (same target: it reconnects by itself) applies b2.
		mustApply(t, tgt, b2)
		want := []string{"a|v2|2.00|2", "c|v2|2.00|2"}
		wantRows(t, products(t, db), want...)

		// Replays of committed batches are no-ops, even an older one that
		// would otherwise revert a's value and revive b.
		mustApply(t, tgt2, b1)
		mustApply(t, tgt2, b2)
		mustApply(t, tgt, b1)
		wantRows(t, products(t, db), want...)
		if got := storedOffsets(t, db); len(got) != 1 || !strings.HasSuffix(got[0], "|0|5") {
			t.Fatalf("offsets after replays: %q", got)
		}
		// A batch overlapping the committed range applies only its new part.
		b3 := (&msgs{from: 4}).ins(product("c", "OLD", num("9"), num("9"))).ins(product("d", "v3", num("3"), num("3"))).batch()
		mustApply(t, tgt2, b3)
		wantRows(t, products(t, db), "a|v2|2.00|2", "c|v2|2.00|2", "d|v3|3.00|3")
	})
}

func TestPoisonMessages(t *testing.T) {
	forEachDB(t, func(t *testing.T, db *testDB) {
		db.exec(t, productsDDL(db))
		db.exec(t, db.pick(
			`ALTER TABLE erp.products ADD CONSTRAINT qty_positive CHECK (qty >= 0)`,
			"ALTER TABLE products ADD CONSTRAINT qty_positive CHECK (qty >= 0)"))
		tgt, _ := newTarget(t, db, func(c *Config) { c.Columns = map[string]string{"title": "name"} })

		tests := []struct {
			name    string
			batch   *target.Batch
			failed  []int
			message []string // substrings of the failed messages' errors, by position in failed
		}{
			{
				name: "unknown column",
				batch: (&msgs{from: 0}).
					ins(product("a", "A", nil, nil)).
					ins(map[string]any{"sku": "b", "colour": "red"}).
					ins(map[string]any{"sku": "c", "title": "renamed"}).
					batch(),
				failed:  []int{1},
				message: []string{`unknown column "colour"`},
			},
			{
				name: "missing and null key",
				batch: (&msgs{from: 3}).
					ins(map[string]any{"name": "no key"}).
					ins(product("d", "D", nil, nil)).
					del(map[string]any{"sku": nil}).
					batch(),
				failed:  []int{0, 2},
				message: []string{`key column "sku" missing`, `key column "sku" is null`},
			},
			{
				name: "rejected by the database",
				batch: (&msgs{from: 6}).
					ins(product("e", "E", nil, nil)).
					ins(product("f", "F", nil, num("-1"))).                        // check constraint
					ins(product("g", "a name far too long for twenty", nil, nil)). // varchar(20)
					ins(product("h", "H", "not a number", nil)).                   // numeric
					upd(product("e", "E2", num("1.5"), num("7"))).
					batch(),
				failed:  []int{1, 2, 3},
				message: []string{"qty_positive", db.pick("22001", "1406"), db.pick("22P02", "1366")},
			},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				before := products(t, db)
				offsBefore := storedOffsets(t, db)
				err := apply(t, tgt, tc.batch)
				re := recordErrors(t, err)
				got := failedIndexes(re)
				if len(got) != len(tc.failed) {
					t.Fatalf("failed indexes %v, want %v (%v)", got, tc.failed, re.Failed)
				}
				for i, idx := range tc.failed {
					if got[i] != idx {
						t.Fatalf("failed indexes %v, want %v", got, tc.failed)
					}
					if msg := re.Failed[idx].Error(); !strings.Contains(msg, tc.message[i]) {
						t.Errorf("message %d: %q does not mention %q", idx, msg, tc.message[i])
					}
				}
				// Nothing committed.
				wantRows(t, products(t, db), before...)
				if got := storedOffsets(t, db); strings.Join(got, ",") != strings.Join(offsBefore, ",") {
					t.Fatalf("offsets moved: %q -> %q", offsBefore, got)
				}
				// The delivery layer dead-letters them and applies the rest.
				mustApply(t, tgt, without(tc.batch, re.Failed))
			})
		}
		wantRows(t, products(t, db), "a|A|NULL|NULL", "c|renamed|NULL|NULL", "d|D|NULL|NULL", "e|E2|1.50|7")
		if got := storedOffsets(t, db); len(got) != 1 || !strings.HasSuffix(got[0], "|0|11") {
			t.Fatalf("offsets: %q", got)
		}
	})
}

func TestPermanentErrors(t *testing.T) {
	forEachDB(t, func(t *testing.T, db *testDB) {
		db.exec(t, productsDDL(db))
		t.Run("bad password", func(t *testing.T) {
			const secret = "Wr0ng-S3cret-pw"
			dsn := db.addUser(t, "plume_pw", "the-right-one", secret)
			_, _, err := openTarget(t, db, func(c *Config) { c.DSN = dsnOf(dsn) })
			if err == nil {
				t.Fatal("Open with a bad password succeeded")
			}
			if !target.IsPermanent(err) {
				t.Fatalf("want a Permanent error, got %v", err)
			}
			msg := err.Error()
			t.Logf("error: %s", msg)
			if strings.Contains(msg, secret) {
				t.Fatalf("message leaks the password: %s", msg)
			}
			for _, want := range []string{"products", "127.0.0.1:"} {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q does not name %q", msg, want)
				}
			}
		})
		t.Run("missing table", func(t *testing.T) {
			_, _, err := openTarget(t, db, func(c *Config) { c.Table = db.schema + ".nope" })
			if !target.IsPermanent(err) || !strings.Contains(err.Error(), "nope") {
				t.Fatalf("want a Permanent error naming the table, got %v", err)
			}
		})
		t.Run("no unique key", func(t *testing.T) {
			_, _, err := openTarget(t, db, func(c *Config) { c.Key = []string{"name"} })
			if !target.IsPermanent(err) || !strings.Contains(err.Error(), "unique") {
				t.Fatalf("want a Permanent error about the key, got %v", err)
			}
		})
		t.Run("table dropped while running", func(t *testing.T) {
			db.exec(t, db.pick(`CREATE TABLE erp.tmp (sku text PRIMARY KEY)`, "CREATE TABLE tmp (sku VARCHAR(10) PRIMARY KEY)"))
			tgt, _ := newTarget(t, db, func(c *Config) { c.Table = db.schema + ".tmp" })
			db.exec(t, "DROP TABLE "+db.schema+".tmp")
			b := (&msgs{}).ins(map[string]any{"sku": "a"}).batch()
			err := apply(t, tgt, b)
			if err == nil || target.IsPermanent(err) {
				t.Fatalf("first failure should be retried (the table is reloaded), got %v", err)
			}
			if err := apply(t, tgt, b); !target.IsPermanent(err) {
				t.Fatalf("after reload: want Permanent, got %v", err)
			}
		})
	})
}

// TestColumnAddedWhileRunning: a row naming a column added after Open is
// not poison: the table is reloaded first.
func TestColumnAddedWhileRunning(t *testing.T) {
	forEachDB(t, func(t *testing.T, db *testDB) {
		db.exec(t, productsDDL(db))
		tgt, _ := newTarget(t, db, nil)
		mustApply(t, tgt, (&msgs{}).ins(product("a", "A", nil, nil)).batch())
		db.exec(t, "ALTER TABLE "+db.schema+".products ADD COLUMN colour VARCHAR(10)")
		row := product("b", "B", nil, nil)
		row["colour"] = "red"
		mustApply(t, tgt, (&msgs{from: 1}).ins(row).batch())
		if got := joinRows(db.rows(t, "SELECT sku, colour FROM "+db.schema+".products ORDER BY sku")); got != "a|NULL,b|red" {
			t.Fatalf("rows: %s", got)
		}
	})
}

// TestBatchLevelConflict: two spellings of one numeric key ("1", "1.0")
// are different coalescing keys but the same row. PostgreSQL rejects the
// multi-row upsert (21000); the row-by-row retry applies the batch.
func TestBatchLevelConflict(t *testing.T) {
	forEachDB(t, func(t *testing.T, db *testDB) {
		db.exec(t, db.pick(`CREATE TABLE erp.products (sku numeric(10,1) PRIMARY KEY, name text)`,
			"CREATE TABLE products (sku DECIMAL(10,1) PRIMARY KEY, name TEXT)"))
		tgt, _ := newTarget(t, db, nil)
		b := (&msgs{}).
			ins(map[string]any{"sku": num("1"), "name": "first"}).
			upd(map[string]any{"sku": num("1.0"), "name": "second"}).
			batch()
		mustApply(t, tgt, b)
		if got := joinRows(db.rows(t, "SELECT sku, name FROM "+db.schema+".products")); got != "1.0|second" {
			t.Fatalf("rows: %s", got)
		}
		if got := storedOffsets(t, db); len(got) != 1 || !strings.HasSuffix(got[0], "|0|2") {
			t.Fatalf("offsets: %q", got)
		}
	})
}

// TestGeneratedAndIdentity (PostgreSQL): identity columns are written with
// OVERRIDING SYSTEM VALUE; a generated column in a row is poison.
func TestGeneratedAndIdentity(t *testing.T) {
	db := newPGDB(t)
	db.exec(t, `CREATE TABLE erp.products (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
		price numeric, doubled numeric GENERATED ALWAYS AS (price * 2) STORED)`)
	tgt, _ := newTarget(t, db, func(c *Config) { c.Key = []string{"id"} })
	b := (&msgs{}).
		ins(map[string]any{"id": num("42"), "price": num("1.5")}).
		ins(map[string]any{"id": num("43"), "price": num("1"), "doubled": num("2")}).
		batch()
	re := recordErrors(t, apply(t, tgt, b))
	if got := failedIndexes(re); len(got) != 1 || got[0] != 1 || !strings.Contains(re.Failed[1].Error(), "generated") {
		t.Fatalf("failed: %v", re.Failed)
	}
	mustApply(t, tgt, without(b, re.Failed))
	if got := joinRows(db.rows(t, "SELECT id, doubled FROM erp.products")); got != "42|3.0" {
		t.Fatalf("rows: %s", got)
	}
}

// TestDeferredConstraint (PostgreSQL): a DEFERRABLE INITIALLY DEFERRED
// foreign key is checked per statement, so a violating row is found and
// rejected instead of failing every COMMIT.
func TestDeferredConstraint(t *testing.T) {
	db := newPGDB(t)
	db.exec(t, `CREATE TABLE erp.makers (id int PRIMARY KEY);
		INSERT INTO erp.makers VALUES (1);
		CREATE TABLE erp.products (sku text PRIMARY KEY, maker int REFERENCES erp.makers DEFERRABLE INITIALLY DEFERRED)`)
	tgt, _ := newTarget(t, db, nil)
	b := (&msgs{}).
		ins(map[string]any{"sku": "a", "maker": num("1")}).
		ins(map[string]any{"sku": "b", "maker": num("2")}).
		batch()
	re := recordErrors(t, apply(t, tgt, b))
	if got := failedIndexes(re); len(got) != 1 || got[0] != 1 || !strings.Contains(re.Failed[1].Error(), "23503") {
		t.Fatalf("failed: %v", re.Failed)
	}
	mustApply(t, tgt, without(b, re.Failed))
	if got := joinRows(db.rows(t, "SELECT sku, maker FROM erp.products")); got != "a|1" {
		t.Fatalf("rows: %s", got)
	}
}
