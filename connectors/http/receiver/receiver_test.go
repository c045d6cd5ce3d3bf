package receiver_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	httptarget "github.com/plumecdc/plume/connectors/http"
	"github.com/plumecdc/plume/connectors/http/receiver"
	"github.com/plumecdc/plume/pkg/event"
	"github.com/plumecdc/plume/pkg/target"
)

var table = &event.Table{
	Connector: "postgresql", Database: "shop", Schema: "public", Name: "products",
	Columns: []event.Column{{Name: "id", Type: "bigint"}, {Name: "sku", Type: "text"}},
	Key:     []int{1},
}

// messages encodes n inserts as Kafka records and turns them into target
// messages (as the router would). Subjects repeat every 5 messages; one
// has a subject that needs percent-encoding in binary mode.
func messages(t *testing.T, n int) []target.Message {
	enc := &event.Encoder{Pipeline: "p"}
	msgs := make([]target.Message, n)
	for i := range msgs {
		sku := []string{"a", "b", "c d", "é", "e"}[i%5]
		c := &event.Change{Op: event.OpCreate, Table: table, After: []event.Value{int64(i), sku},
			Commit: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), TxID: "1", Pos: "lsn:0/1", Index: int64(i)}
		rec := enc.Record("p.public.products", c)
		rec.Offset = int64(i)
		msgs[i] = toMessage(t, rec)
	}
	return msgs
}

func toMessage(t *testing.T, rec *kgo.Record) target.Message {
	ev, err := event.Decode(rec)
	if err != nil {
		t.Fatal(err)
	}
	m := target.Message{Topic: rec.Topic, Offset: rec.Offset, ID: ev.ID, Source: ev.Source, Subject: ev.Subject, Route: "all", Value: rec.Value}
	for _, h := range rec.Headers {
		m.Headers = append(m.Headers, target.Header{Key: h.Key, Value: h.Value})
	}
	return m
}

func send(t *testing.T, url, mode string, msgs []target.Message) error {
	cfg := httptarget.DefaultConfig()
	cfg.URL, cfg.Mode, cfg.MaxBatch = url, mode, 4
	tg, err := httptarget.New(cfg, "erp", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	return tg.Apply(context.Background(), &target.Batch{Messages: msgs})
}

// TestCountsAndDuplicates replays a batch (as after a crash): every event
// is counted twice, once as unique and once as a duplicate.
func TestCountsAndDuplicates(t *testing.T) {
	for _, mode := range []string{httptarget.ModeBinary, httptarget.ModeStructured, httptarget.ModeBatch} {
		t.Run(mode, func(t *testing.T) {
			rc := receiver.New()
			rc.Strict, rc.Keep = true, true
			srv := httptest.NewServer(rc)
			defer srv.Close()
			msgs := messages(t, 20)
			for range 2 {
				if err := send(t, srv.URL, mode, msgs); err != nil {
					t.Fatal(err)
				}
			}
			st := rc.Stats()
			if st.Events != 40 || st.Unique != 20 || st.Duplicates != 20 || st.Rejected != 0 || st.Overlaps != 0 {
				t.Fatalf("stats %+v", st)
			}
			for _, m := range msgs {
				if n := rc.Count(m.Source, m.ID); n != 2 {
					t.Fatalf("%s received %d times", m.ID, n)
				}
			}
			evs := rc.Events()
			if len(evs) != 40 {
				t.Fatalf("%d events kept", len(evs))
			}
			subjects := map[string]bool{}
			for _, e := range evs {
				if e.Mode != mode || e.IdempotencyKey == "" || e.Extensions["table"] != "products" || len(e.Data) == 0 || e.Type != "io.plume.row.insert" {
					t.Fatalf("event %+v", e)
				}
				subjects[e.Subject] = true
			}
			if !subjects["sku=c d"] || !subjects["sku=é"] {
				t.Fatalf("subjects not decoded: %v", subjects)
			}
		})
	}
}

// TestRespond rejects requests on demand; rejected events are not counted.
func TestRespond(t *testing.T) {
	rc := receiver.New()
	var mu sync.Mutex
	fail := true
	rc.Respond = func(r *http.Request, evs []receiver.Event) int {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			fail = false
			return http.StatusServiceUnavailable
		}
		return 0
	}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	msgs := messages(t, 1)
	if err := send(t, srv.URL, httptarget.ModeBinary, msgs); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("want a 503, got %v", err)
	}
	if err := send(t, srv.URL, httptarget.ModeBinary, msgs); err != nil {
		t.Fatal(err)
	}
	if st := rc.Stats(); st.Requests != 2 || st.Rejected != 1 || st.Events != 1 || st.Unique != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestMalformed answers 400 to what is not a CloudEvent.
func TestMalformed(t *testing.T) {
	rc := receiver.New()
	rc.Strict = true
	srv := httptest.NewServer(rc)
	defer srv.Close()
	for _, c := range []struct{ ct, body string }{
		{"application/json", `{}`},
		{"application/cloudevents+json", `{"id":"1"}`},
		{"application/cloudevents-batch+json", `[]`},
		{"application/cloudevents-batch+json", `{`},
	} {
		resp, err := http.Post(srv.URL, c.ct, strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Fatalf("%s %s: status %d", c.ct, c.body, resp.StatusCode)
		}
	}
	if st := rc.Stats(); st.Rejected != 4 || st.Events != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestWaitUnique(t *testing.T) {
	rc := receiver.New()
	srv := httptest.NewServer(rc)
	defer srv.Close()
	msgs := messages(t, 10)
	cfg := httptarget.DefaultConfig()
	cfg.URL, cfg.Mode = srv.URL, httptarget.ModeBatch
	tg, err := httptarget.New(cfg, "erp", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	go tg.Apply(context.Background(), &target.Batch{Messages: msgs})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rc.WaitUnique(ctx, 10); err != nil {
		t.Fatal(err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if err := rc.WaitUnique(short, 11); err == nil || !strings.Contains(err.Error(), "10 of 11") {
		t.Fatalf("got %v", err)
	}
	rc.Reset()
	if st := rc.Stats(); st.Unique != 0 || rc.Count(msgs[0].Source, msgs[0].ID) != 0 {
		t.Fatalf("after Reset: %+v", st)
	}
}

// TestOverlaps notices two requests for one subject in flight together.
func TestOverlaps(t *testing.T) {
	rc := receiver.New()
	rc.Delay = 200 * time.Millisecond
	srv := httptest.NewServer(rc)
	defer srv.Close()
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() {
			req, _ := http.NewRequest("POST", srv.URL, strings.NewReader(`{}`))
			req.Header.Set("Ce-Specversion", "1.0")
			req.Header.Set("Ce-Id", []string{"1", "2"}[i])
			req.Header.Set("Ce-Source", "/s")
			req.Header.Set("Ce-Type", "t")
			req.Header.Set("Ce-Subject", "id=1")
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	if st := rc.Stats(); st.Overlaps != 1 || st.MaxInFlight != 2 || st.Unique != 2 {
		t.Fatalf("stats %+v", st)
	}
}
