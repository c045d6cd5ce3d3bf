package target

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/event"
)

// DeadLetter is one event that could not be delivered, with why.
type DeadLetter struct {
	Msg      Message // Value and Headers carry the original record
	Route    string
	Target   string
	Err      error
	Attempts int
	// reread: Msg was routed without its record (a RowsOnly target); the
	// delivery layer reads Value and Headers again from Kafka before
	// sending the dead letter.
	reread bool
}

// DLQ writes dead letters to the pipeline's dead-letter topic. The original
// CloudEvent is kept as it was (value and ce_ headers) and these extension
// attributes are added (binary mode headers):
//
//	ce_dlqroute, ce_dlqtarget, ce_dlqerror, ce_dlqattempts, ce_dlqtime,
//	ce_dlqtopic, ce_dlqpartition, ce_dlqoffset (where the event was read)
type DLQ struct {
	Topic string
	cl    *kgo.Client
}

// NewDLQ returns a DLQ writing through cl (an idempotent producer, acks=all).
func NewDLQ(cl *kgo.Client, topic string) *DLQ { return &DLQ{Topic: topic, cl: cl} }

// Send writes the dead letters and waits until Kafka has them.
func (d *DLQ) Send(ctx context.Context, dls []DeadLetter) error {
	if len(dls) == 0 {
		return nil
	}
	recs := make([]*kgo.Record, 0, len(dls))
	now := event.FormatTime(time.Now())
	for _, dl := range dls {
		r := &kgo.Record{Topic: d.Topic, Value: dl.Msg.Value}
		if dl.Msg.Subject != "" {
			r.Key = []byte(dl.Msg.Subject)
		}
		for _, h := range dl.Msg.Headers {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: h.Key, Value: h.Value})
		}
		errText := "unknown"
		if dl.Err != nil {
			errText = dl.Err.Error()
		}
		r.Headers = append(r.Headers,
			kgo.RecordHeader{Key: "ce_dlqroute", Value: []byte(dl.Route)},
			kgo.RecordHeader{Key: "ce_dlqtarget", Value: []byte(dl.Target)},
			kgo.RecordHeader{Key: "ce_dlqerror", Value: []byte(errText)},
			kgo.RecordHeader{Key: "ce_dlqattempts", Value: []byte(strconv.Itoa(dl.Attempts))},
			kgo.RecordHeader{Key: "ce_dlqtime", Value: []byte(now)},
			kgo.RecordHeader{Key: "ce_dlqtopic", Value: []byte(dl.Msg.Topic)},
			kgo.RecordHeader{Key: "ce_dlqpartition", Value: []byte(strconv.Itoa(int(dl.Msg.Partition)))},
			kgo.RecordHeader{Key: "ce_dlqoffset", Value: []byte(strconv.FormatInt(dl.Msg.Offset, 10))},
		)
		recs = append(recs, r)
	}
	if err := d.cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("write to dead-letter topic %q: %w", d.Topic, err)
	}
	return nil
}
