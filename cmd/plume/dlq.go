package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/kafka"
	"github.com/plumecdc/plume/pkg/router"
	"github.com/plumecdc/plume/pkg/runtime"
	"github.com/plumecdc/plume/pkg/target"
)

// connectKafka returns client settings for the pipeline's Kafka. With the
// embedded broker it uses the running pipeline's broker when one answers at
// kafka.embedded.listen, and otherwise starts the broker from state_dir
// (the pipeline must then be stopped); close releases it.
func connectKafka(cfg *config.Pipeline, log *slog.Logger) (cc kafka.ClientConfig, closeFn func(), err error) {
	closeFn = func() {}
	if !cfg.Embedded() {
		cc, err = runtime.ClientConfig(cfg, cfg.Kafka.Brokers)
		return cc, closeFn, err
	}
	listen := cfg.Kafka.Embedded.Listen
	cc, _ = runtime.ClientConfig(cfg, []string{listen})
	if opts, err := cc.Opts(); err == nil {
		if cl, err := kgo.NewClient(opts...); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			pingErr := cl.Ping(ctx)
			cancel()
			cl.Close()
			if pingErr == nil {
				return cc, closeFn, nil
			}
		}
	}
	e, err := kafka.StartEmbedded(cfg.StateDir, "127.0.0.1:0", log)
	if err != nil {
		return cc, closeFn, fmt.Errorf("the pipeline's embedded broker is not running and could not be started from %s: %w", cfg.StateDir, err)
	}
	cc, err = runtime.ClientConfig(cfg, []string{e.Addr()})
	return cc, e.Close, err
}

// deadLetter is one record of the dead-letter topic.
type deadLetter struct {
	Offset    int64  `json:"offset"`
	Partition int32  `json:"partition"`
	ID        string `json:"id"`
	Key       string `json:"key"`
	Target    string `json:"target"`
	Route     string `json:"route"`
	Error     string `json:"error"`
	Attempts  string `json:"attempts"`
	Time      string `json:"time"`
	From      string `json:"from"` // topic/partition@offset the event was read at
	rec       *kgo.Record
}

func readDLQ(cc kafka.ClientConfig, topic string) ([]deadLetter, error) {
	opts, err := cc.Opts()
	if err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(append(opts, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	var out []deadLetter
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		if fs.NumRecords() == 0 {
			break
		}
		fs.EachRecord(func(r *kgo.Record) {
			d := deadLetter{Offset: r.Offset, Partition: r.Partition, rec: r}
			h := map[string]string{}
			for _, x := range r.Headers {
				h[x.Key] = string(x.Value)
			}
			d.ID, d.Target, d.Route, d.Error = h["ce_id"], h["ce_dlqtarget"], h["ce_dlqroute"], h["ce_dlqerror"]
			d.Key = string(r.Key)
			if d.Error == "" {
				d.Error = h["ce_dlqreason"] // capture-stage dead letters
			}
			d.Attempts, d.Time = h["ce_dlqattempts"], h["ce_dlqtime"]
			d.From = h["ce_dlqtopic"] + "/" + h["ce_dlqpartition"] + "@" + h["ce_dlqoffset"]
			out = append(out, d)
		})
	}
	return out, nil
}

func cmdDLQ(args []string, stdout, stderr io.Writer) int {
	const usageText = "Usage: plume dlq list -c FILE [--target NAME] [--json]\n" +
		"       plume dlq replay -c FILE --target NAME [--id ID]... [--from OFFSET] [--to OFFSET]\n\n" +
		"List the dead-letter queue, or re-deliver dead letters to their target after a fix."
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprintln(stdout, usageText)
		return 0
	}
	if len(args) == 0 || (args[0] != "list" && args[0] != "replay") {
		fmt.Fprintln(stderr, usageText)
		return 2
	}
	sub := args[0]
	fs := newFlags("dlq "+sub, "dlq "+sub+" -c FILE [flags]",
		"list: print the dead letters of the pipeline's DLQ topic.\n"+
			"replay: route the selected dead letters again (with the routes as they are now) and apply\n"+
			"them to their target. Stop the pipeline first if it uses the embedded broker's state_dir\n"+
			"exclusively. A transactional target records the replay, so replaying twice applies once.", stdout, stderr)
	file := fs.String("c", "", "pipeline config file (required)")
	tgt := fs.String("target", "", "only dead letters of this target (required for replay)")
	asJSON := fs.Bool("json", false, "list: one JSON object per line")
	var ids multiFlag
	fs.Var(&ids, "id", "replay: only this CloudEvents id (repeatable)")
	from := fs.Int64("from", 0, "replay: first DLQ offset")
	to := fs.Int64("to", -1, "replay: last DLQ offset (-1: the end)")
	if code, done := parseFlags(fs, args[1:], stdout); done {
		return code
	}
	if *file == "" || (sub == "replay" && *tgt == "") {
		fmt.Fprintln(stderr, usageText)
		return 2
	}
	cfg, err := config.Load(*file)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	log := newLogger(cfg, stderr)
	cc, closeKafka, err := connectKafka(cfg, log)
	if err != nil {
		fmt.Fprintln(stderr, "plume dlq:", err)
		return 1
	}
	defer closeKafka()
	all, err := readDLQ(cc, cfg.DLQTopic())
	if err != nil {
		fmt.Fprintln(stderr, "plume dlq:", err)
		return 1
	}
	var sel []deadLetter
	for _, d := range all {
		if *tgt != "" && d.Target != *tgt {
			continue
		}
		if sub == "replay" && (d.Offset < *from || (*to >= 0 && d.Offset > *to) || (len(ids) > 0 && !ids.has(d.ID))) {
			continue
		}
		sel = append(sel, d)
	}
	if sub == "list" {
		for _, d := range sel {
			if *asJSON {
				b, _ := json.Marshal(d)
				fmt.Fprintln(stdout, string(b))
				continue
			}
			fmt.Fprintf(stdout, "%d\t%s\ttarget=%s\troute=%s\tkey=%s\tid=%s\tfrom=%s\terror=%s\n", d.Offset, d.Time, d.Target, d.Route, d.Key, d.ID, d.From, d.Error)
		}
		fmt.Fprintf(stderr, "%d dead letter(s) in %s\n", len(sel), cfg.DLQTopic())
		return 0
	}
	n, failed, err := replay(cfg, cc, *tgt, sel, log)
	if err != nil {
		fmt.Fprintln(stderr, "plume dlq replay:", err)
		return 1
	}
	for _, f := range failed {
		fmt.Fprintln(stderr, "still failing:", f)
	}
	fmt.Fprintf(stdout, "replayed %d message(s) from %d dead letter(s) to %s; %d still failing\n", n, len(sel), *tgt, len(failed))
	if len(failed) > 0 {
		return 1
	}
	return 0
}

// replay routes dead letters again and applies them to the target. The
// messages are located at their DLQ coordinates, and the batch's offsets
// are the DLQ partition's, so a transactional target records the replay.
func replay(cfg *config.Pipeline, cc kafka.ClientConfig, name string, dls []deadLetter, log *slog.Logger) (int, []string, error) {
	if _, ok := cfg.Targets[name]; !ok {
		return 0, nil, fmt.Errorf("no target %q in %s", name, cfg.File)
	}
	if len(dls) == 0 {
		return 0, nil, nil
	}
	r, err := router.Compile(cfg.Routes)
	if err != nil {
		return 0, nil, err
	}
	tr := r.ForTarget(name)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t, err := target.New(ctx, target.Env{Pipeline: cfg, Name: name, Config: cfg.Targets[name], Log: log, Kafka: cc})
	if err != nil {
		return 0, nil, err
	}
	defer t.Close()
	if _, err := t.Open(ctx); err != nil {
		return 0, nil, err
	}
	b := &target.Batch{Offsets: target.Offsets{}}
	var failed []string
	for _, d := range dls {
		orig := &kgo.Record{Topic: d.rec.Topic, Partition: d.rec.Partition, Offset: d.rec.Offset, Key: d.rec.Key, Value: d.rec.Value}
		for _, h := range d.rec.Headers {
			if !strings.HasPrefix(h.Key, "ce_dlq") {
				orig.Headers = append(orig.Headers, h)
			}
		}
		msgs, err := tr.Eval(orig)
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s (DLQ offset %d): %v", d.ID, d.Offset, err))
		}
		b.Messages = append(b.Messages, msgs...)
		tp := target.TopicPartition{Topic: d.rec.Topic, Partition: d.rec.Partition}
		b.Offsets[tp] = max(b.Offsets[tp], d.rec.Offset+1)
	}
	for attempt := 1; ; attempt++ {
		err := t.Apply(ctx, b)
		var re *target.RecordErrors
		switch {
		case err == nil:
			return len(b.Messages), failed, nil
		case errors.As(err, &re):
			var rest []target.Message
			for i, m := range b.Messages {
				if e, bad := re.Failed[i]; bad {
					failed = append(failed, m.ID+": "+e.Error())
				} else {
					rest = append(rest, m)
				}
			}
			if re.Applied {
				return len(rest), failed, nil
			}
			b.Messages = rest
		case target.IsPermanent(err) || attempt >= 5:
			return 0, failed, err
		default:
			log.Warn("replay failed; retrying", "attempt", attempt, "err", err)
			time.Sleep(time.Duration(attempt) * time.Second)
		}
	}
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
func (m multiFlag) has(v string) bool {
	for _, x := range m {
		if x == v {
			return true
		}
	}
	return false
}
