// Package ops serves a running pipeline's operational surface: Prometheus
// metrics, liveness and readiness, and the admin API (status, pause and
// resume of a target, ad-hoc snapshots, offsets). Metrics are read from the
// stages' atomic counters at scrape time, so the hot path pays nothing for
// them.
package ops

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/plumecdc/plume/pkg/runtime"
)

// Metrics holds the pipeline's registry.
type Metrics struct {
	Registry *prometheus.Registry

	commitLatency prometheus.Histogram
	batchSize     *prometheus.HistogramVec
	batchLatency  *prometheus.HistogramVec
}

// NewMetrics registers every metric of p. Call it before p.Run so the
// histograms observe from the first batch.
func NewMetrics(p *runtime.Pipeline) *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{Registry: reg}
	constLabels := prometheus.Labels{"pipeline": p.Cfg.Name}

	m.commitLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "plume_kafka_transaction_commit_seconds", Help: "Time to flush and commit one capture Kafka transaction.",
		ConstLabels: constLabels, Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	})
	p.CaptureStats.CommitLatency = func(d time.Duration) { m.commitLatency.Observe(d.Seconds()) }
	m.batchSize = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "plume_target_batch_size", Help: "Messages per applied target batch.",
		ConstLabels: constLabels, Buckets: prometheus.ExponentialBuckets(1, 4, 8),
	}, []string{"target"})
	m.batchLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "plume_target_batch_seconds", Help: "Time to apply one target batch, retries included.",
		ConstLabels: constLabels, Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	}, []string{"target"})
	reg.MustRegister(m.commitLatency, m.batchSize, m.batchLatency, &stageCollector{p: p, labels: constLabels})
	return m
}

// ObserveTargets hooks the batch histograms into the targets' stats. Call
// it after p.Run has created them (runtime.Pipeline.TargetStats).
func (m *Metrics) ObserveTargets(p *runtime.Pipeline) {
	for name, st := range p.TargetStats {
		size, lat := m.batchSize.WithLabelValues(name), m.batchLatency.WithLabelValues(name)
		st.BatchObserver = func(n int, d time.Duration) {
			size.Observe(float64(n))
			lat.Observe(d.Seconds())
		}
	}
}

// stageCollector reads the stages' counters at scrape time.
type stageCollector struct {
	p      *runtime.Pipeline
	labels prometheus.Labels
}

var (
	descCaptureEvents   = "plume_capture_events_total"
	descCaptureTxns     = "plume_kafka_transactions_total"
	descSourceLagBytes  = "plume_source_lag_bytes"
	descSourceLagSecs   = "plume_source_lag_seconds"
	descCheckpointAge   = "plume_checkpoint_age_seconds"
	descDelivered       = "plume_target_delivered_total"
	descDeadLetters     = "plume_target_dead_letters_total"
	descRetries         = "plume_target_retries_total"
	descTargetLagSecs   = "plume_target_lag_seconds"
	descTargetPaused    = "plume_target_paused"
	descSourceEvents    = "plume_source_events_total"
	descSnapRows        = "plume_snapshot_rows_total"
	descSnapChunks      = "plume_snapshot_chunks"
	descSnapRemRows     = "plume_snapshot_remaining_rows"
	descSnapRemSecs     = "plume_snapshot_remaining_seconds"
	descRouted          = "plume_router_events_total"
	descTargetLagEvents = "plume_target_lag_events"
	descTargetFailing   = "plume_target_failing_seconds"
)

func (c *stageCollector) desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, c.labels)
}

// Describe sends nothing: the collector is unchecked, because which
// metrics exist depends on the stage and on whether the source runs.
func (c *stageCollector) Describe(chan<- *prometheus.Desc) {}

func (c *stageCollector) Collect(ch chan<- prometheus.Metric) {
	p := c.p
	st := &p.CaptureStats
	if p.Stage != runtime.StageRoute {
		ch <- prometheus.MustNewConstMetric(c.desc(descCaptureEvents, "Change events committed to Kafka by capture."),
			prometheus.CounterValue, float64(st.Events.Load()))
		ch <- prometheus.MustNewConstMetric(c.desc("plume_kafka_record_bytes_total", "Record bytes (key, value, headers, before compression) committed to Kafka by capture."),
			prometheus.CounterValue, float64(st.Bytes.Load()))
		txns := c.desc(descCaptureTxns, "Capture Kafka transactions by outcome.", "result")
		ch <- prometheus.MustNewConstMetric(txns, prometheus.CounterValue, float64(st.Transactions.Load()), "committed")
		ch <- prometheus.MustNewConstMetric(txns, prometheus.CounterValue, float64(st.Aborted.Load()), "aborted")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		bytes, secs, err := p.SourceLag(ctx)
		cancel()
		if err == nil {
			ch <- prometheus.MustNewConstMetric(c.desc(descSourceLagBytes, "Source log not yet captured: PostgreSQL slot lag (pg_current_wal_lsn - confirmed_flush_lsn) or MySQL binlog distance."),
				prometheus.GaugeValue, float64(bytes))
			ch <- prometheus.MustNewConstMetric(c.desc(descSourceLagSecs, "Seconds from the source commit of the newest captured change to now, while behind."),
				prometheus.GaugeValue, secs)
		}
		if last := st.LastCommit.Load(); last > 0 {
			ch <- prometheus.MustNewConstMetric(c.desc(descCheckpointAge, "Seconds since the stage last checkpointed.", "stage"),
				prometheus.GaugeValue, time.Since(time.Unix(0, last)).Seconds(), "capture")
		}
		perTable := c.desc(descSourceEvents, "Change events committed to Kafka by capture, per source table and operation (insert, update, delete, read = snapshot row, truncate).", "table", "op")
		for k, v := range st.TableEvents() {
			ch <- prometheus.MustNewConstMetric(perTable, prometheus.CounterValue, float64(v), k.Table, k.Op.String())
		}
		now := time.Now()
		for _, sp := range st.Snapshots() {
			ch <- prometheus.MustNewConstMetric(c.desc(descSnapRows, "Snapshot rows of a table committed to Kafka by this process.", "table"), prometheus.CounterValue, float64(sp.RowsRead), sp.Table)
			chunks := c.desc(descSnapChunks, "Snapshot chunks of a table: done, and total (estimated from the table statistics where the source plans as it goes).", "table", "state")
			ch <- prometheus.MustNewConstMetric(chunks, prometheus.GaugeValue, float64(sp.ChunksDone), sp.Table, "done")
			ch <- prometheus.MustNewConstMetric(chunks, prometheus.GaugeValue, float64(sp.ChunksTotal), sp.Table, "total")
			if r := sp.RemainingRows(); r >= 0 {
				ch <- prometheus.MustNewConstMetric(c.desc(descSnapRemRows, "Estimated snapshot rows of a table still to read.", "table"), prometheus.GaugeValue, float64(r), sp.Table)
			}
			if r := sp.RemainingSeconds(now); r >= 0 {
				ch <- prometheus.MustNewConstMetric(c.desc(descSnapRemSecs, "Estimated seconds until a table's snapshot is done, from this process's chunk rate.", "table"), prometheus.GaugeValue, r, sp.Table)
			}
		}
	}
	for name, routes := range p.Routed {
		for route, n := range routes {
			ch <- prometheus.MustNewConstMetric(c.desc(descRouted, "Messages a route produced for a target.", "target", "route"), prometheus.CounterValue, float64(n.Load()), name, route)
		}
	}
	for name, ts := range p.TargetStats {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		lag, err := p.TargetLag(ctx, name)
		cancel()
		if err == nil {
			ch <- prometheus.MustNewConstMetric(c.desc(descTargetLagEvents, "Offsets a target's consumer group is behind the topics' last stable offsets (Kafka consumer lag; a trailing transaction marker counts as one).", "target"), prometheus.GaugeValue, float64(lag), name)
		}
		ch <- prometheus.MustNewConstMetric(c.desc(descDelivered, "Messages applied by a target.", "target"), prometheus.CounterValue, float64(ts.Delivered.Load()), name)
		ch <- prometheus.MustNewConstMetric(c.desc(descDeadLetters, "Events a target sent to the dead-letter queue.", "target"), prometheus.CounterValue, float64(ts.DeadLetter.Load()), name)
		ch <- prometheus.MustNewConstMetric(c.desc(descRetries, "Failed target attempts that were retried.", "target"), prometheus.CounterValue, float64(ts.Retries.Load()), name)
		paused := 0.0
		if ts.Paused.Load() {
			paused = 1
		}
		ch <- prometheus.MustNewConstMetric(c.desc(descTargetPaused, "1 while a target is paused.", "target"), prometheus.GaugeValue, paused, name)
		failing := 0.0
		if since := ts.FailingSince.Load(); since > 0 {
			failing = time.Since(time.Unix(0, since)).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(c.desc(descTargetFailing, "Seconds a target has been failing without a success (0 when healthy).", "target"), prometheus.GaugeValue, failing, name)
		if last := ts.LastSourceTime.Load(); last > 0 {
			ch <- prometheus.MustNewConstMetric(c.desc(descTargetLagSecs, "Seconds from the source commit of the newest applied change to now.", "target"),
				prometheus.GaugeValue, time.Since(time.Unix(0, last)).Seconds(), name)
		}
		if last := ts.LastCheckpoint.Load(); last > 0 {
			ch <- prometheus.MustNewConstMetric(c.desc(descCheckpointAge, "Seconds since the stage last checkpointed.", "stage"),
				prometheus.GaugeValue, time.Since(time.Unix(0, last)).Seconds(), "target:"+name)
		}
	}
}
